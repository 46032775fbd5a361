"""Static checks of the container recipe (in make test, no engine needed): compose.yaml
and the test override against the compose-spec schema (check-jsonschema), the Compose
contract the issue asks for, and the Dockerfile / .dockerignore rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.binaries import required_binary
from tests.support import ROOT

COMPOSE = ROOT / "compose.yaml"
OVERRIDE = ROOT / "tests" / "containers" / "compose.test.yaml"
EMBEDDED = ROOT / "deploy" / "compose" / "embedded.yaml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_files_match_the_compose_spec_schema():
    proc = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE), str(OVERRIDE), str(EMBEDDED)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_broken_file(tmp_path):
    """The validator really validates: an unknown service key fails."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: a\n    no_such_key: 1\n")
    proc = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_docker_compose_resolves_both_files():
    compose = required_binary("docker-compose", "docker-compose")
    env = {"PATH": "/usr/bin:/bin", "MONGO_ROOT_PASSWORD": "x", "INFERENCE_TOKEN": "x"}
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(OVERRIDE)], ["-f", str(COMPOSE), "-f", str(EMBEDDED)]):
        extra = {f"IOTC_{k}": "1" for k in ("KAFKA_PORT", "MONGO_PORT", "POSTGRES_PORT", "INFERENCE_PORT", "COUNT")}
        extra.update(IOTC_DATASET_DIR="/tmp", IOTC_OUT_DIR="/tmp", IOTC_APP_IMAGE="a", IOTC_INFERENCE_IMAGE="i",
                     IOTC_EMBEDDED_IMAGE="e", IOTC_POSTGRES_IMAGE="p", IOTC_PRODUCER_ID="p", IOTC_DATASET_NAME="d")
        proc = subprocess.run([compose, *files, "--project-directory", str(ROOT), "config", "-q"],
                              env={**env, **extra}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


def test_compose_services_and_start_order():
    services = _compose()["services"]
    assert {"kafka", "kafka-init", "mongo", "inference", "inference-consumer", "db-consumer", "producer",
            "experiment"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["mongo"]["image"].startswith("mongo:")
    for name in ("kafka", "mongo", "inference"):
        assert services[name].get("healthcheck"), f"{name} has no health check"
    assert any(v.endswith(":/data/db") for v in services["mongo"]["volumes"])
    deps = {name: s.get("depends_on", {}) for name, s in services.items()}
    assert deps["kafka-init"]["kafka"]["condition"] == "service_healthy"
    assert deps["db-consumer"]["mongo"]["condition"] == "service_healthy"
    # the inference consumer waits for the service itself (its start-up check asks /v1/model
    # until it answers), so that it also runs with no service (deploy/compose/embedded.yaml)
    assert "inference" not in deps["inference-consumer"]
    for name in ("inference-consumer", "db-consumer", "producer", "experiment"):
        assert deps[name]["kafka-init"]["condition"] == "service_completed_successfully"
    # every container that mounts the dataset cache waits for the one that fills it from the
    # image, so that replicas created together do not race at Docker's copy into the volume
    cache_users = [name for name, s in services.items() if name != "dataset-cache-init"
                   and any(str(v).startswith("dataset-cache:") for v in s.get("volumes", []))]
    assert sorted(cache_users) == ["experiment", "producer"], cache_users
    for name in cache_users:
        assert deps[name]["dataset-cache-init"]["condition"] == "service_completed_successfully"
    assert services["dataset-cache-init"]["restart"] == "no"
    assert services["experiment"]["profiles"] == ["experiment"]
    assert "experiments.experiment" in services["experiment"]["command"]
    assert any(v.endswith(":/app/results") for v in services["experiment"]["volumes"])
    # scalable: no fixed container name, no host port on the producer or the consumers
    for name in ("producer", "inference-consumer", "db-consumer"):
        assert "container_name" not in services[name] and "ports" not in services[name]


def test_store_profiles():
    """--profile postgres / couchdb: the official images, each with a health check, a data
    volume and its password from .env (neither starts without one), reachable from the
    Compose network only; the DB consumer and the experiment get STORE and every store's
    endpoint by service name, and neither store starts without its profile."""
    services = _compose()["services"]
    pg, couch = services["postgres"], services["couchdb"]
    assert pg["profiles"] == ["postgres"] and couch["profiles"] == ["couchdb"]
    assert pg["image"].startswith("postgres:") and couch["image"].startswith("couchdb:3")
    assert pg["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-}"
    assert couch["environment"]["COUCHDB_PASSWORD"] == "${COUCHDB_PASSWORD:-}"
    for s in (pg, couch):
        assert s.get("healthcheck") and "ports" not in s
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert any(v.endswith(":/opt/couchdb/data") for v in couch["volumes"])
    single = next(v.split(":")[0] for v in couch["volumes"] if "local.d" in v)
    assert "single_node = true" in (ROOT / single).read_text()
    for name in ("db-consumer", "experiment"):
        env = services[name]["environment"]
        assert env["STORE"] == "${STORE:-mongodb}", name
        assert (env["POSTGRES_HOST"], env["COUCHDB_URL"]) == ("postgres", "http://couchdb:5984"), name
        assert env["POSTGRES_USER"] == pg["environment"]["POSTGRES_USER"], name
        assert env["COUCHDB_USER"] == couch["environment"]["COUCHDB_USER"], name
    compose = required_binary("docker-compose", "docker-compose")
    for profile, store in (("postgres", "postgres"), ("couchdb", "couchdb")):
        env = {"PATH": "/usr/bin:/bin", "MONGO_ROOT_PASSWORD": "x", "INFERENCE_TOKEN": "x", "STORE": store}
        proc = subprocess.run([compose, "-f", str(COMPOSE), "--project-directory", str(ROOT), "--profile", profile,
                               "config"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        config = yaml.safe_load(proc.stdout)
        assert config["services"]["db-consumer"]["environment"]["STORE"] == store


def test_partitions_cover_the_scaled_consumers():
    text = COMPOSE.read_text()
    default = int(re.search(r"IMAGES_PARTITIONS:-(\d+)", text).group(1))
    assert default >= 5, "the images topic needs a partition per inference-consumer replica (up to 5)"
    assert "--partitions $$IMAGES_PARTITIONS" in text


def test_no_secret_in_compose():
    text = COMPOSE.read_text()
    assert "MONGO_ROOT_PASSWORD:?" in text, "the MongoDB password must come from the environment/.env"
    assert "INFERENCE_TOKEN:?" in text, "the inference token must come from the environment/.env"
    for line in text.splitlines():
        if re.search(r"PASSWORD\s*:", line):
            assert "${" in line, f"literal password: {line.strip()}"
    assert (ROOT / ".env.example").is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode
    assert ignored == 0, ".env must be git-ignored"


def test_the_inference_api_wants_its_token_and_its_clients_send_it():
    """The secure default of the VMs where the images allow (docs/CONTAINERS.md): the
    service and every client of it get INFERENCE_TOKEN from .env, required."""
    services = _compose()["services"]
    for name in ("inference", "inference-consumer", "experiment"):
        assert services[name]["environment"]["INFERENCE_TOKEN"].startswith("${INFERENCE_TOKEN:?"), name
    assert re.search(r"^INFERENCE_TOKEN=", (ROOT / ".env.example").read_text(), re.M)
    # the UIs only on the host's loopback, nothing else published
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"prometheus": ["127.0.0.1:9090:9090"], "grafana": ["127.0.0.1:3000:3000"]}, published


def _dockerfile_stages() -> dict[str, str]:
    """Each stage of the Dockerfile -> its instructions, those of the stages it is built FROM
    first: what the image of that target holds."""
    blocks = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    own = {m.group(2): (m.group(1), b) for b in blocks if (m := re.match(r"(\S+) AS (\S+)", b))}

    def inherited(name: str) -> str:
        parent, block = own[name]
        return (inherited(parent) if parent in own else "") + block

    return {name: inherited(name) for name in own}


def test_dockerfile_rules():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert {"app", "inference"} <= set(stages)
    assert len(stages) >= 4, "multi-stage: build stages separate from the runtime ones"
    assert "org.opencontainers.image.title" in text and "org.opencontainers.image.source" in text
    by_stage = _dockerfile_stages()
    for final in ("app", "inference"):
        assert re.search(r"^USER (?!root|0\b)\w+", by_stage[final], re.M), f"{final} runs as root"
        assert "HEALTHCHECK" in by_stage[final], f"{final} has no HEALTHCHECK"
    # TensorFlow only in the inference image: the app's venv never sees inference.txt
    assert "inference.txt" not in by_stage["build-app"] and "inference.txt" in by_stage["build-inference"]
    assert "--from=build-inference" not in by_stage["app"]


def test_the_torch_engine_has_its_own_image_target():
    """MODEL_ENGINE=torch: the inference-torch target installs requirements/runtime-torch.txt
    (PyTorch's CPU build first, no TensorFlow), runs as the service user and says its engine;
    Compose builds it with IOT_INFERENCE_TARGET and passes MODEL_ENGINE and MODEL through."""
    by_stage = _dockerfile_stages()
    build = by_stage["build-inference-torch"]
    assert "runtime-torch.txt" in build and "inference.txt" not in build
    assert "download.pytorch.org/whl/cpu" in build and "--no-deps" in build
    final = by_stage["inference-torch"]
    assert "--from=build-inference-torch" in final and "MODEL_ENGINE=torch" in final
    assert re.search(r"^USER (?!root|0\b)\w+", final, re.M) and "HEALTHCHECK" in final
    # one serve setup for both inference images: they differ in their venv and engine only
    assert (ROOT / "Dockerfile").read_text().count("HEALTHCHECK") == 2, "one per shared stage (clients, serve)"
    inference = _compose()["services"]["inference"]
    assert inference["build"]["target"] == "${IOT_INFERENCE_TARGET:-inference}"
    assert inference["environment"]["MODEL_ENGINE"] == "${MODEL_ENGINE:-tensorflow}"
    assert "MODEL" in inference["environment"] and inference["environment"]["MODEL"] is None  # unset: the default


def test_dockerignore_keeps_secrets_and_artefacts_out():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*") if "*" in lines else 0] == "*", "an allow-list: everything ignored first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for never in (".venv", "results", ".run", ".deploy", "clouds.yaml", "inventory", ".env", ".git", "bench"):
        assert never not in allowed
    # The one-off cost studies (bench/) are not the product: neither sent nor copied.
    assert not re.search(r"^COPY\s+(\S+\s+)*bench/", (ROOT / "Dockerfile").read_text(), re.M)
    for secret in ("**/clouds.yaml", "**/*.vault", "**/vault.yml", "**/.env"):
        assert secret in lines


def test_monitoring_profile():
    """docker compose --profile monitoring: Prometheus with the pipeline's rules and a config
    promtool accepts, scraping every component by the job names the rules and the Grafana
    dashboard use (scaled services by DNS); Grafana with the same dashboard, no default
    password; both on 127.0.0.1 only, neither started without the profile."""
    services = _compose()["services"]
    prom, grafana = services["prometheus"], services["grafana"]
    assert prom["profiles"] == ["monitoring"] == grafana["profiles"]
    for s in (prom, grafana):
        assert all(p.startswith("127.0.0.1:") for p in s["ports"]), s["ports"]
    config_path = ROOT / "monitoring" / "prometheus" / "compose.yml"
    assert f"./{config_path.relative_to(ROOT)}:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./monitoring/prometheus/rules:/etc/prometheus/rules:ro" in prom["volumes"]
    config = yaml.safe_load(config_path.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"inference", "inference-consumer", "db-consumer", "producer", "prometheus"}
    ports = {"inference-consumer": 9101, "db-consumer": 9102, "producer": 9100}
    for job, port in ports.items():  # by DNS, on the port the service is given
        assert jobs[job]["dns_sd_configs"][0] == {**jobs[job]["dns_sd_configs"][0], "names": [job], "port": port}
        assert str(services[job]["environment"]["METRICS_PORT"]) == str(port)
    assert config["rule_files"] == ["/etc/prometheus/rules/pipeline.yml"]
    out = subprocess.run([required_binary("promtool"), "check", "config", "--syntax-only", str(config_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # Grafana: the dashboard of the VMs, the datasource uid it expects, a password from .env
    datasource = yaml.safe_load((ROOT / "monitoring/grafana/compose/datasources.yml").read_text())["datasources"][0]
    dashboard = (ROOT / "monitoring/grafana/dashboards/iot-pipeline.json").read_text()
    assert datasource["url"] == "http://prometheus:9090" and f'"uid": "{datasource["uid"]}"' in dashboard
    assert "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards/iot:ro" in grafana["volumes"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert "exit 1" in grafana["entrypoint"][-1] and "exec /run.sh" in grafana["entrypoint"][-1]
    assert "GRAFANA_ADMIN_PASSWORD=" in (ROOT / ".env.example").read_text()


def _resolved(*files: Path, **env: str) -> dict:
    """`docker-compose config` of compose.yaml and the given overrides (their interpolation,
    merge and profiles as Compose applies them)."""
    compose = required_binary("docker-compose", "docker-compose")
    args = [a for f in (COMPOSE, *files) for a in ("-f", str(f))]
    proc = subprocess.run([compose, *args, "--project-directory", str(ROOT), "config"],
                          env={"PATH": "/usr/bin:/bin", "MONGO_ROOT_PASSWORD": "x", "INFERENCE_TOKEN": "x", **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["services"]


def _started(services: dict) -> set[str]:
    """What `docker compose up` starts with no profile: the services without one and every
    service they depend on (Compose refuses a dependency on a service it would not start)."""
    todo, started = [n for n, s in services.items() if not s.get("profiles")], set()
    while todo:
        name = todo.pop()
        if name not in started:
            started.add(name)
            todo += list(services[name].get("depends_on") or {})
    return started


def test_the_embedded_override_runs_the_model_in_the_consumer_and_no_service():
    """INFERENCE_MODE=embedded in Compose (deploy/compose/embedded.yaml over compose.yaml): the
    inference consumer runs from the torch inference image (the Dockerfile's inference-torch
    target, which holds the consumers' code and packages) with INFERENCE_MODE=embedded and the
    model's settings, checked on its /metrics (the image's /healthz is the service's); the
    inference service is not started, and nothing that starts depends on it.  Without the
    override: the service and the app image, as before."""
    plain = _resolved()
    assert "inference" in _started(plain)
    assert plain["inference-consumer"]["image"] == "iot-pipeline/app:latest"
    assert "INFERENCE_MODE" not in plain["inference-consumer"]["environment"]

    services = _resolved(EMBEDDED)
    started = _started(services)
    assert "inference" not in started and services["inference"]["profiles"] == ["service"]
    assert {"kafka", "kafka-init", "mongo", "inference-consumer", "db-consumer", "producer"} <= started
    consumer = services["inference-consumer"]
    assert consumer["build"]["target"] == "inference-torch" and consumer["image"].startswith("iot-pipeline/inference-torch")
    assert consumer["command"] == ["python", "-m", "consumers.inference"]
    env = consumer["environment"]
    assert (env["INFERENCE_MODE"], env["MODEL_ENGINE"], env["MODEL_WEIGHTS"]) == ("embedded", "torch", "auto")
    assert "MODEL" in env and env["MODEL"] is None  # unset: the engine's default network
    assert str(env["METRICS_PORT"]) in " ".join(consumer["healthcheck"]["test"])
    assert any(v.endswith(":/home/iot/.keras") or v.endswith(":/home/iot/.keras:rw") for v in consumer["volumes"])
    # the model's settings from the shell, as for the service (TensorFlow's image and engine)
    tf = _resolved(EMBEDDED, MODEL_ENGINE="tensorflow", IOT_INFERENCE_TARGET="inference",
                   IOT_INFERENCE_IMAGE="iot-pipeline/inference", MODEL="resnet50")["inference-consumer"]
    assert (tf["build"]["target"], tf["environment"]["MODEL_ENGINE"], tf["environment"]["MODEL"]) == \
        ("inference", "tensorflow", "resnet50")
    # the image it runs holds the consumer: the code stage (every package) and core's requirements
    blocks = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    by_stage = {re.match(r"\S+ AS (\S+)", b).group(1): b for b in blocks}
    assert "COPY --from=code /app /app" in by_stage["inference-torch"]
    assert "COPY consumers/ /app/consumers/" in by_stage["code"]
    assert "-r core.txt" in (ROOT / "requirements" / "runtime-torch.txt").read_text()
