"""The supervisor's restart policy and its state files, without starting the stack."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from urllib.parse import quote

from stack.handover import Successor
from stack.supervisor import EMBEDDED_FETCH_MAX_WAIT_MS, Component, Supervisor


def _dead(argv=(sys.executable, "-c", "raise SystemExit(3)")) -> subprocess.Popen:
    proc = subprocess.Popen(list(argv))
    proc.wait()
    return proc


def test_a_component_that_must_not_restart_stops_the_stack_loudly(tmp_path):
    sup = Supervisor(tmp_path)
    broker = Component("kafka", ["tansu"], ready=lambda: True, no_restart="memory only")
    consumer = Component("db-consumer", ["x"], ready=lambda: True)
    broker.proc, consumer.proc = _dead(), None
    sup.components = [broker, consumer]
    sup.watch()
    assert sup.stopping and "kafka" in sup.failure and "memory only" in sup.failure
    assert "exited with 3" in sup.failure and broker.restarts == 0


def test_an_ordinary_component_is_restarted_after_a_backoff(tmp_path):
    sup = Supervisor(tmp_path)
    c = Component("db-consumer", [sys.executable, "-c", "pass"], ready=lambda: True, env={})
    c.proc = _dead()
    sup.components = [c]
    sup.watch()  # schedules the restart
    assert not sup.stopping and c.next_restart_at > 0 and c.restarts == 0
    c.next_restart_at = 1e-9  # due now
    sup.watch()
    assert c.restarts == 1 and c.proc.pid == int((tmp_path / "pids" / "db-consumer.pid").read_text())
    c.proc.wait()


def test_stack_env_is_readable_by_its_owner_only(tmp_path):
    sup = Supervisor(tmp_path)
    sup.endpoints = {"MONGO_URI": "mongodb://app:s3cret@db:27017/iot"}
    (tmp_path / "stack.env").write_text("old\n")
    (tmp_path / "stack.env").chmod(0o644)
    sup.write_env()
    mode = stat.S_IMODE((tmp_path / "stack.env").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert (tmp_path / "stack.env").read_text() == "MONGO_URI=mongodb://app:s3cret@db:27017/iot\n"


def test_status_masks_passwords_and_shows_a_failure(tmp_path):
    from pathlib import Path

    (tmp_path / "stack.env").write_text("MONGO_URI=mongodb://app:s3cret@db:27017/iot\nCOUCHDB_USER=iot\n"
                                        "COUCHDB_PASSWORD=c0uchs3cret\n")
    (tmp_path / "failed").write_text("kafka exited and is not restarted\n")
    out = subprocess.run([sys.executable, "-m", "stack", "status"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2],
                         env={"STACK_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert "s3cret" not in out.stdout + out.stderr
    assert "mongodb://app:***@db:27017/iot" in out.stdout and "not restarted" in out.stdout
    assert "COUCHDB_PASSWORD=***" in out.stdout and "COUCHDB_USER=iot" in out.stdout


def _planned_env(tmp_path, monkeypatch, **env) -> dict:
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "MONGO_URI", "INFERENCE_URL", "KAFKA_FETCH_MAX_WAIT_MS", "STORE",
                "STACK_BROKER_STORAGE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAFKA_IDEMPOTENCE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STACK_PROMETHEUS", "0")
    monkeypatch.setenv("STACK_DASHBOARD", "0")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sup = Supervisor(tmp_path)
    sup.plan()
    return {c.name: c.env for c in sup.components} | {"stack.env": sup.endpoints}


def test_the_embedded_broker_gets_a_short_fetch_wait_everywhere(tmp_path, monkeypatch):
    # tansu holds a fetch for half its max wait even when records arrive (supervisor.py)
    planned = _planned_env(tmp_path, monkeypatch)
    assert planned["stack.env"]["KAFKA_FETCH_MAX_WAIT_MS"] == str(EMBEDDED_FETCH_MAX_WAIT_MS)
    assert planned["inference-consumer"]["KAFKA_FETCH_MAX_WAIT_MS"] == str(EMBEDDED_FETCH_MAX_WAIT_MS)


def test_a_chosen_fetch_wait_or_an_external_broker_keeps_its_own(tmp_path, monkeypatch):
    planned = _planned_env(tmp_path, monkeypatch, KAFKA_FETCH_MAX_WAIT_MS="250")
    assert "KAFKA_FETCH_MAX_WAIT_MS" not in planned["stack.env"]
    assert planned["db-consumer"]["KAFKA_FETCH_MAX_WAIT_MS"] == "250"
    planned = _planned_env(tmp_path / "ext", monkeypatch, KAFKA_BOOTSTRAP_SERVERS="kafka:9092")
    assert "KAFKA_FETCH_MAX_WAIT_MS" not in planned["stack.env"]
    assert "KAFKA_FETCH_MAX_WAIT_MS" not in planned["db-consumer"]


def _components(tmp_path) -> dict[str, Component]:
    sup = Supervisor(tmp_path)
    sup.plan()
    return {c.name: c for c in sup.components}


def test_a_broker_on_s3rver_keeps_its_data_and_is_restarted_like_any_component(tmp_path, monkeypatch):
    planned = _planned_env(tmp_path, monkeypatch, STACK_BROKER_STORAGE="s3", STACK_S3RVER_PORT="0")
    key_id, secret = (tmp_path / "data" / "broker.keys").read_text().split()
    assert stat.S_IMODE((tmp_path / "data" / "broker.keys").stat().st_mode) == 0o600
    assert len(key_id) >= 20 and len(secret) >= 32
    assert planned["kafka"]["AWS_ACCESS_KEY_ID"] == key_id and planned["kafka"]["AWS_SECRET_ACCESS_KEY"] == secret
    assert planned["kafka"]["AWS_ENDPOINT"].startswith("http://127.0.0.1:")
    # tansu's S3 engine fails idempotent sessions under concurrent producers (stack/broker.py)
    assert planned["stack.env"]["KAFKA_IDEMPOTENCE"] == "false" == planned["inference-consumer"]["KAFKA_IDEMPOTENCE"]
    # The keys go to the broker only: never to stack.env, the consumers or s3rver's command line.
    for name, env in planned.items():
        if name != "kafka":
            assert secret not in "".join(env.values()) and key_id not in "".join(env.values()), name
    components = _components(tmp_path)
    names = list(components)
    assert names.index("s3rver") < names.index("kafka")  # the storage answers before the broker starts
    # The retention deletes what every group has read, signing with the key file, never on its command line.
    retention = components["broker-retention"]
    assert names.index("kafka") < names.index("broker-retention")
    assert str(tmp_path / "data" / "broker.keys") in retention.argv and secret not in " ".join(retention.argv)
    broker, s3 = components["kafka"], components["s3rver"]
    assert not broker.no_restart and "s3://tansu/" in broker.argv
    assert str(tmp_path / "data" / "broker") in s3.argv and secret not in " ".join(s3.argv)
    assert s3.argv[s3.argv.index(str(tmp_path / "data" / "broker")) + 1] == \
        broker.env["AWS_ENDPOINT"].rsplit(":", 1)[1]
    # The same keys on the next start (s3rver's data is kept; so are they).
    assert _planned_env(tmp_path, monkeypatch, STACK_BROKER_STORAGE="s3",
                        STACK_S3RVER_PORT="0")["kafka"]["AWS_ACCESS_KEY_ID"] == key_id


def test_a_memory_broker_the_default_is_never_restarted_and_needs_no_s3rver(tmp_path, monkeypatch):
    planned = _planned_env(tmp_path, monkeypatch)
    assert "s3rver" not in planned and "broker-retention" not in planned and "AWS_ACCESS_KEY_ID" not in planned["kafka"]
    assert "KAFKA_IDEMPOTENCE" not in planned["stack.env"]
    broker = _components(tmp_path)["kafka"]
    assert "memory://tansu/" in broker.argv and "memory" in broker.no_restart
    assert not (tmp_path / "data" / "broker.keys").exists()
def test_embedded_inference_starts_no_service(tmp_path, monkeypatch):
    """INFERENCE_MODE=embedded: the consumers run the model, so no Gunicorn, no INFERENCE_URL
    published, and the consumers get the model's load time to join; a given URL is kept."""
    monkeypatch.delenv("STACK_INFERENCE_CONSUMERS", raising=False)
    planned = _planned_env(tmp_path, monkeypatch, INFERENCE_MODE="embedded", STACK_INFERENCE_READY_S="123")
    assert "inference" not in planned and "INFERENCE_URL" not in planned["stack.env"]
    assert "INFERENCE_URL" not in planned["inference-consumer"]
    assert planned["inference-consumer"]["INFERENCE_MODE"] == "embedded"
    sup = Supervisor(tmp_path)
    sup.plan()
    waits = {c.name: c.ready_timeout_s for c in sup.components}
    assert waits["inference-consumer"] == 123 and waits["db-consumer"] != 123
    service = _planned_env(tmp_path / "svc", monkeypatch, INFERENCE_MODE="service")
    assert "inference" in service and service["stack.env"]["INFERENCE_URL"].startswith("http://127.0.0.1:")
    external = _planned_env(tmp_path / "ext", monkeypatch, INFERENCE_MODE="embedded", INFERENCE_URL="http://gpu:8000")
    assert "inference" not in external and external["stack.env"]["INFERENCE_URL"] == "http://gpu:8000"


def test_store_postgres_plans_a_cluster_of_its_own_and_no_mongodb(tmp_path, monkeypatch):
    for key in ("POSTGRES_DSN", "POSTGRES_HOST", "POSTGRES_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    planned = _planned_env(tmp_path, monkeypatch, STORE="postgres", STACK_POSTGRES_BIN_DIR="/opt/pg/bin",
                           STACK_POSTGRES_PORT="0")
    env = planned["stack.env"]
    assert env["STORE"] == "postgres" and "MONGO_URI" not in env and "mongo" not in planned
    password = (tmp_path / "data" / "postgres.password").read_text().strip()
    assert env["POSTGRES_DSN"].startswith(f"postgresql://iot:{password}@127.0.0.1:") and len(password) >= 32
    assert planned["db-consumer"]["POSTGRES_DSN"] == env["POSTGRES_DSN"]
    assert planned["db-consumer"]["STORE"] == "postgres"
    sup = Supervisor(tmp_path)
    sup.plan()
    (server,) = [c for c in sup.components if c.name == "postgres"]
    assert "/opt/pg/bin/postgres" in server.argv and server.before_start is not None
    assert server.stop_signal == signal.SIGINT  # fast shutdown: does not wait for clients
    assert stat.S_IMODE((tmp_path / "data" / "postgres.password").stat().st_mode) == 0o600
    # The same password on the next start: the cluster keeps its data across restarts.
    assert _planned_env(tmp_path, monkeypatch, STORE="postgres", STACK_POSTGRES_BIN_DIR="/opt/pg/bin",
                        STACK_POSTGRES_PORT="0")["stack.env"]["POSTGRES_DSN"].split("@")[0] == \
        env["POSTGRES_DSN"].split("@")[0]


def test_an_external_postgres_is_used_and_none_started(tmp_path, monkeypatch):
    planned = _planned_env(tmp_path, monkeypatch, STORE="postgres", POSTGRES_HOST="db.example",
                           POSTGRES_PASSWORD="p@ss word", POSTGRES_DB="pipeline")
    assert "postgres" not in planned and "mongo" not in planned
    assert planned["stack.env"]["POSTGRES_DSN"] == f"postgresql://iot:{quote('p@ss word')}@db.example:5432/pipeline"
    monkeypatch.delenv("POSTGRES_HOST")
    planned = _planned_env(tmp_path / "dsn", monkeypatch, STORE="postgres",
                           POSTGRES_DSN="postgresql://app:pw@db:5433/iot")
    assert "postgres" not in planned and planned["stack.env"]["POSTGRES_DSN"] == "postgresql://app:pw@db:5433/iot"
    assert not (tmp_path / "dsn" / "data" / "postgres.password").exists()


def test_store_couchdb_plans_pouchdb_server_on_disk_and_no_mongodb(tmp_path, monkeypatch):
    for key in ("COUCHDB_URL", "COUCHDB_USER", "COUCHDB_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    planned = _planned_env(tmp_path, monkeypatch, STORE="couchdb", STACK_POUCHDB_SERVER="/opt/pouchdb-server",
                           STACK_COUCHDB_PORT="0")
    env = planned["stack.env"]
    assert env["STORE"] == "couchdb" and "MONGO_URI" not in env and "mongo" not in planned
    password = (tmp_path / "data" / "couchdb.password").read_text().strip()
    assert env["COUCHDB_URL"].startswith("http://127.0.0.1:") and env["COUCHDB_USER"] == "iot"
    assert env["COUCHDB_PASSWORD"] == password and len(password) >= 32
    assert stat.S_IMODE((tmp_path / "data" / "couchdb.password").stat().st_mode) == 0o600
    assert planned["db-consumer"]["COUCHDB_URL"] == env["COUCHDB_URL"] and planned["db-consumer"]["STORE"] == "couchdb"
    sup = Supervisor(tmp_path)
    sup.plan()
    (server,) = [c for c in sup.components if c.name == "couchdb"]
    assert server.argv[0] == "/opt/pouchdb-server" and "--in-memory" not in server.argv
    assert server.argv[server.argv.index("--dir") + 1] == str(tmp_path / "data" / "couchdb")
    assert server.argv[server.argv.index("--host") + 1] == "127.0.0.1"
    server.before_start()
    config = (tmp_path / "data" / "couchdb" / "config.json")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and '"iot"' in config.read_text()


def test_an_external_couchdb_is_used_and_none_started(tmp_path, monkeypatch):
    planned = _planned_env(tmp_path, monkeypatch, STORE="couchdb", COUCHDB_URL="https://couch.example:6984",
                           COUCHDB_USER="app", COUCHDB_PASSWORD="pw")
    assert "couchdb" not in planned and "mongo" not in planned
    assert {k: planned["stack.env"][k] for k in ("COUCHDB_URL", "COUCHDB_USER", "COUCHDB_PASSWORD")} == {
        "COUCHDB_URL": "https://couch.example:6984", "COUCHDB_USER": "app", "COUCHDB_PASSWORD": "pw"}
    assert not (tmp_path / "data" / "couchdb.password").exists()


# ---------------------------------------------------------------- handover (stack/handover.py)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _serving(tmp_path, successor_argv, ready, ready_timeout_s=60.0):
    """A supervisor whose one component runs SLEEPER and can be handed over to
    ``successor_argv`` (ready when ``ready()`` says so)."""
    sup = Supervisor(tmp_path)
    c = Component("inference", SLEEPER, ready=lambda: True, env={}, ready_timeout_s=ready_timeout_s,
                  stop_timeout_s=5, handover=lambda: Successor(list(successor_argv), ready))
    sup.components = [c]
    sup.start(c)
    return sup, c


def _answer(tmp_path, name="inference"):
    import json

    f = tmp_path / "handover" / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def test_a_ready_successor_takes_over_and_the_old_one_is_stopped(tmp_path):
    flag = tmp_path / "successor-ready"
    sup, c = _serving(tmp_path, SLEEPER, flag.exists)
    old = c.proc
    (tmp_path / "handover" / "inference").touch()
    sup.watch()  # starts the successor beside the old one
    assert c.proc is old and old.poll() is None and _answer(tmp_path) is None
    new = sup.handovers.pending["inference"].proc
    sup.watch()
    assert c.proc is old, "handed over before the successor was ready"
    flag.touch()
    sup.watch()
    assert c.proc is new and int((tmp_path / "pids" / "inference.pid").read_text()) == new.pid
    answer = _answer(tmp_path)
    assert answer["ok"] and (answer["pid"], answer["old_pid"]) == (new.pid, old.pid), answer
    assert not (tmp_path / "handover" / "inference").exists()
    assert old.wait(10) == -signal.SIGTERM  # stopped the way a stop does, and reaped
    sup.watch()
    assert not sup.handovers.retiring and c.restarts == 0, "the old one's exit read as a crash"
    sup.shutdown()
    assert new.poll() is not None


def test_a_successor_that_exits_or_is_never_ready_leaves_the_old_one_serving(tmp_path):
    sup, c = _serving(tmp_path, [sys.executable, "-c", "raise SystemExit(4)"], lambda: False)
    old = c.proc
    (tmp_path / "handover" / "inference").touch()
    sup.watch()
    sup.handovers.pending["inference"].proc.wait(10)
    sup.watch()
    answer = _answer(tmp_path)
    assert not answer["ok"] and "exited with 4" in answer["reason"], answer
    assert c.proc is old and old.poll() is None

    c.handover = lambda: Successor(SLEEPER, lambda: False)
    c.ready_timeout_s = 0.0
    (tmp_path / "handover" / "inference").touch()
    sup.watch()
    late = sup.handovers.pending["inference"].proc
    sup.watch()
    answer = _answer(tmp_path)
    assert not answer["ok"] and "not ready after" in answer["reason"], answer
    assert late.wait(10) == -signal.SIGTERM and c.proc is old and old.poll() is None
    sup.shutdown()


def test_a_component_without_a_handover_is_refused_and_keeps_running(tmp_path):
    sup = Supervisor(tmp_path)
    c = Component("db-consumer", SLEEPER, ready=lambda: True, env={}, stop_timeout_s=5)
    sup.components = [c]
    sup.start(c)
    (tmp_path / "handover" / "db-consumer").touch()
    sup.watch()
    answer = _answer(tmp_path, "db-consumer")
    assert not answer["ok"] and "cannot be handed over" in answer["reason"]
    assert c.proc.poll() is None and not sup.handovers.pending
    sup.shutdown()
