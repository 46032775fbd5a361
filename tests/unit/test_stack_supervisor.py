"""The supervisor's restart policy and its state files, without starting the stack."""

from __future__ import annotations

import stat
import subprocess
import sys

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

    (tmp_path / "stack.env").write_text("MONGO_URI=mongodb://app:s3cret@db:27017/iot\n")
    (tmp_path / "failed").write_text("kafka exited and is not restarted\n")
    out = subprocess.run([sys.executable, "-m", "stack", "status"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2],
                         env={"STACK_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert "s3cret" not in out.stdout + out.stderr
    assert "mongodb://app:***@db:27017/iot" in out.stdout and "not restarted" in out.stdout


def _planned_env(tmp_path, monkeypatch, **env) -> dict:
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "MONGO_URI", "INFERENCE_URL", "KAFKA_FETCH_MAX_WAIT_MS"):
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
