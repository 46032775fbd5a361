"""Offline checks of the Ansible deployment (issue 4): nothing here reaches a cloud.

* ``ansible-playbook --syntax-check`` on every playbook, ansible-lint (production
  profile, zero findings), yamllint;
* every role template rendered with the default variables by
  tests/deploy/render_templates.yaml, then validated here (Kafka properties,
  mongod.conf, systemd units, environment files, the provisioned inventory);
* the application roles in check mode against this machine;
* structural checks: argument specs cover the defaults, teardown mirrors
  provisioning, the master playbook has every stage tag.

The tools come from requirements-deploy.txt (``make test`` installs it).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.binaries import required_binary, required_module, venv_tool
from tests.support import requirement_names

yaml = required_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "tests" / "deploy"
INVENTORY = DEPLOY / "inventory.yml"
VAULT_EXAMPLE = ROOT / "inventory" / "group_vars" / "all" / "vault.yml.example"
PLAYBOOKS = [ROOT / "playbook_master.yaml", *sorted((ROOT / "playbooks").glob("*.yaml")),
             DEPLOY / "render_templates.yaml", DEPLOY / "check_mode.yaml", DEPLOY / "check_stores.yaml"]
STAGES = ["provision", "base", "app", "kafka", "store", "inference", "consumers", "monitoring", "producer",
          "experiment", "analyze", "k8s"]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())


def tool(name: str) -> str:
    return venv_tool(name)  # requirements-deploy.txt, part of make venv's requirements.txt


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env or ansible_env(), capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------- tools

@pytest.fixture(scope="session")
def lint_process():
    """ansible-lint is the slowest check: start it first, collect it in its test."""
    exe = tool("ansible-lint")
    proc = subprocess.Popen([exe, "--offline", "--profile", "production", "--nocolor",
                             "playbook_master.yaml", "playbooks", "roles", "inventory", "tests/deploy"],
                            cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_syntax_check_every_playbook(lint_process):
    exe = tool("ansible-playbook")
    result = run([exe, "--syntax-check", "-i", str(INVENTORY), "-e", f"@{VAULT_EXAMPLE}",
                  *map(str, PLAYBOOKS)])
    assert result.returncode == 0, result.stdout + result.stderr
    for playbook in PLAYBOOKS:
        assert f"playbook: {playbook}" in result.stdout


def test_yamllint():
    exe = tool("yamllint")
    result = run([exe, "--strict", "-c", str(ROOT / ".yamllint"), "playbook_master.yaml",
                  "playbooks", "roles", "inventory", "tests/deploy", ".ansible-lint", ".yamllint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile(lint_process):
    out, _ = lint_process.communicate(timeout=900)
    assert lint_process.returncode == 0, out
    assert "Failed" not in out, out


# ------------------------------------------------------------------ rendered files

@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy-render")
    exe = tool("ansible-playbook")
    result = run([exe, "-i", str(INVENTORY), str(DEPLOY / "render_templates.yaml")],
                 env=ansible_env(IOT_RENDER_OUT=str(out)))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


def properties(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        assert key not in values, f"{path.name}: {key} set twice"
        values[key.strip()] = value.strip()
    return values


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S.*", line), f"{path.name}: bad line {line!r}"
        key, _, value = line.partition("=")
        for bad in ("{{", "}}", "{%", "None", "vault_", "AnsibleUndefined", "omit_place_holder"):
            assert bad not in value, f"{path.name}: {key} holds {bad!r}: {value!r}"
        values[key] = value
    return values


def test_no_unrendered_jinja_anywhere(rendered):
    files = [p for p in rendered.rglob("*") if p.is_file()]
    assert len(files) >= 25, sorted(str(p.relative_to(rendered)) for p in files)
    for path in files:
        text = path.read_text()
        assert "{{" not in text and "{%" not in text, path


def test_kafka_properties_plaintext(rendered):
    props = properties(rendered / "vm3-kafka" / "server.properties")
    assert props["process.roles"] == "broker,controller"          # KRaft, no ZooKeeper
    assert not any(k.startswith("zookeeper") for k in props)
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@10.56.0.13:9093"
    assert props["listeners"] == "PLAINTEXT://10.56.0.13:9092,CONTROLLER://10.56.0.13:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://10.56.0.13:9092"
    assert props["controller.listener.names"] == "CONTROLLER"
    names = {entry.split(":")[0] for entry in props["listener.security.protocol.map"].split(",")}
    for listener in props["listeners"].split(","):
        assert listener.split("://")[0] in names
    assert props["offsets.topic.replication.factor"] == "1"        # one broker by default
    assert props["auto.create.topics.enable"] == "false"
    assert "0.0.0.0" not in props["listeners"]
    assert properties(rendered / "vm3-kafka" / "admin-client.properties") == {"security.protocol": "PLAINTEXT"}


def test_kafka_properties_sasl_ssl(rendered):
    props = properties(rendered / "vm3-kafka" / "secure-server.properties")
    assert props["listeners"].startswith("SASL_SSL://10.56.0.13:9092")
    assert props["advertised.listeners"] == "SASL_SSL://10.56.0.13:9092"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == "PEM"
    jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert 'username="iot-admin"' in jaas and 'password="change-me-kafka-admin"' in jaas
    assert jaas.endswith(";")
    admin = properties(rendered / "vm3-kafka" / "secure-admin-client.properties")
    assert admin["security.protocol"] == "SASL_SSL"
    assert admin["sasl.mechanism"] == "SCRAM-SHA-512"


def test_kafka_topics_default(rendered):
    settings = yaml.safe_load((ROOT / "inventory/group_vars/all/main.yml").read_text())
    assert (settings["iot_images_topic"], settings["iot_images_partitions"]) == ("iot-images", 3)
    assert (settings["iot_results_topic"], settings["iot_results_partitions"]) == ("iot-inference", 3)
    assert (settings["iot_dlq_topic"], settings["iot_dlq_partitions"]) == ("iot-dlq", 1)


def test_mongod_conf(rendered):
    conf = yaml.safe_load((rendered / "vm4-mongodb" / "mongod.conf").read_text())
    assert conf["security"]["authorization"] == "enabled"
    bind = conf["net"]["bindIp"].split(",")
    assert "10.56.0.14" in bind and "0.0.0.0" not in bind
    assert conf["net"]["port"] == 27017
    assert conf["storage"]["dbPath"] == "/var/lib/mongodb"
    script = (rendered / "vm4-mongodb" / "mongodb-iot-users.js").read_text()
    assert "change-me" not in script                               # passwords come from the env
    assert 'role: "readWrite", db: appDbName' in script
    assert 'const appDbName = "iot";' in script
    # A one-member replica set (w: majority), with the key file authorization requires.
    assert conf["replication"]["replSetName"] == "iot-rs"
    assert conf["security"]["keyFile"] == "/etc/mongodb-keyfile"
    replset = (rendered / "vm4-mongodb" / "mongodb-iot-replset.js").read_text()
    assert 'const setName = "iot-rs";' in replset
    assert 'const member = "10.56.0.14:27017";' in replset           # the private IP the clients reach
    assert "rs.initiate(" in replset and "if (!hello.setName)" in replset  # once: guarded
    assert "change-me" not in replset


def test_store_server_configuration(rendered):
    """PostgreSQL and CouchDB on the store VM: loopback and the private IP only (CouchDB the
    latter), SCRAM only, the application role to its own database from the private network,
    every CouchDB request authenticated."""
    vm = rendered / "vm4-mongodb"
    conf = properties(vm / "iot.conf")
    assert conf["listen_addresses"] == "'127.0.0.1,10.56.0.14'" and conf["port"] == "5432"
    assert conf["password_encryption"] == "'scram-sha-256'"
    hba = [line.split() for line in (vm / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert hba == [["local", "all", "postgres", "peer"],
                   ["host", "iot", "iot", "127.0.0.1/32", "scram-sha-256"],
                   ["host", "iot", "iot", "10.56.0.0/22", "scram-sha-256"]], hba
    assert "network-online.target" in unit(vm / "iot-network.conf")["Unit"]["After"]
    ini = configparser.ConfigParser()
    ini.read_string((vm / "iot.ini").read_text())
    assert ini["chttpd"]["bind_address"] == "10.56.0.14" and ini["chttpd"]["port"] == "5984"
    assert ini["chttpd"]["require_valid_user"] == "true" == ini["chttpd_auth"]["require_valid_user"]
    assert ini["couchdb"]["single_node"] == "true"


def test_env_files_name_the_chosen_store(rendered):
    """iot_store picks the clients' store settings: STORE and its endpoint on the store VM
    with the credentials its role creates, and nothing of the other stores."""
    vm = rendered / "vm3-kafka"
    for name in ("db-consumer", "dlq", "producer"):
        pg = env_file(vm / f"postgres-{name}.env")
        assert pg["STORE"] == "postgres", name
        assert pg["POSTGRES_DSN"] == "postgresql://iot:change-me-postgresql-app@10.56.0.14:5432/iot", name
        couch = env_file(vm / f"couchdb-{name}.env")
        assert (couch["STORE"], couch["COUCHDB_URL"]) == ("couchdb", "http://10.56.0.14:5984"), name
        assert (couch["COUCHDB_USER"], couch["COUCHDB_PASSWORD"]) == ("iot", "change-me-couchdb-app"), name
        assert (couch["COUCHDB_DATABASE"], couch["COUCHDB_DLQ_REPLAYS_DATABASE"]) == ("img_db", "img_db_dlq_replays")
        for env in (pg, couch):
            assert not [k for k in env if k.startswith("MONGO_")], (name, env)
    mongo = env_file(vm / "iot-db-consumer.env")
    assert "STORE" not in mongo and not [k for k in mongo if k.startswith(("POSTGRES_", "COUCHDB_"))]


def check_unit(path: Path, exec_start: str, user: str = "iot") -> configparser.RawConfigParser:
    parsed = unit(path)
    assert parsed.sections() == ["Unit", "Service", "Install"], path
    service = parsed["Service"]
    assert parsed["Unit"]["Description"]
    assert "network-online.target" in parsed["Unit"]["After"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == user
    assert exec_start in service["ExecStart"], service["ExecStart"]
    assert service.get("StandardOutput", "journal") == "journal"
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    return parsed


def test_systemd_units(rendered):
    inference = check_unit(rendered / "vm2-inference" / "iot-inference.service",
                           "/opt/iot-pipeline/venv/bin/gunicorn -c inference/gunicorn.conf.py 'inference:create_app()'")
    assert inference["Service"]["EnvironmentFile"] == "/etc/iot-pipeline/iot-inference.env"
    assert inference["Service"]["WorkingDirectory"] == "/opt/iot-pipeline/app"
    assert inference["Service"]["SyslogIdentifier"] == "iot-inference"
    for name, module in (("iot-inference-consumer", "consumers.inference"), ("iot-db-consumer", "consumers.db")):
        parsed = check_unit(rendered / "vm3-kafka" / f"{name}.service", f"/opt/iot-pipeline/venv/bin/python -m {module}")
        assert parsed["Service"]["EnvironmentFile"] == f"/etc/iot-pipeline/{name}.env"
        assert parsed["Service"]["SyslogIdentifier"] == name
    producer = check_unit(rendered / "vm1-producer" / "iot-producer@.service", "-m producer --count ${PRODUCER_COUNT}")
    assert producer["Service"]["Environment"] == "PRODUCER_ID=%i"
    kafka = check_unit(rendered / "vm3-kafka" / "kafka.service",
                       "/opt/kafka/bin/kafka-server-start.sh /etc/kafka/server.properties", user="kafka")
    assert kafka["Service"]["LimitNOFILE"]


def test_env_files(rendered):
    inference = env_file(rendered / "vm2-inference" / "iot-inference.env")
    assert inference["INFERENCE_BIND"] == "10.56.0.12:8000"
    assert inference["MODEL_WEIGHTS"] == "auto"
    assert inference["INFERENCE_TOKEN"] == "change-me-inference-token"
    assert {"GUNICORN_WORKERS", "GUNICORN_THREADS", "TF_INTRA_OP_THREADS"} <= inference.keys()
    assert "MODEL_INPUT_SIZE" not in inference                     # empty default: left out
    assert env_file(rendered / "vm2b-inference" / "iot-inference.env")["INFERENCE_BIND"] == "10.56.0.15:8000"

    consumer = env_file(rendered / "vm3-kafka" / "iot-inference-consumer.env")
    # one URL per inference host: the consumer spreads its batches over them
    assert consumer["INFERENCE_URL"] == "http://10.56.0.12:8000,http://10.56.0.15:8000"
    assert consumer["KAFKA_BOOTSTRAP_SERVERS"] == "10.56.0.13:9092"
    assert consumer["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"                 # the default
    plaintext = env_file(rendered / "vm3-kafka" / "plaintext-iot-inference-consumer.env")
    assert plaintext["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"              # the switch for a benchmark
    assert not {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"} & plaintext.keys()
    assert {"PREDICT_BATCH_IMAGES", "PREDICT_BATCH_WAIT_MS", "INFERENCE_TOKEN", "IMAGES_TOPIC", "RESULTS_TOPIC", "DLQ_TOPIC",
            "IMAGES_PARTITIONS"} <= consumer.keys()

    db = env_file(rendered / "vm3-kafka" / "iot-db-consumer.env")
    assert db["MONGO_URI"] == ("mongodb://iot-app:change-me-mongodb-app@10.56.0.14:27017/iot"
                               "?authSource=iot&directConnection=true")
    assert (db["MONGO_WRITE_CONCERN_W"], db["MONGO_WRITE_JOURNAL"]) == ("majority", "true")
    assert "INFERENCE_URL" not in db

    producer = env_file(rendered / "vm1-producer" / "iot-producer.env")
    assert producer["DATASET"] == "cifar10"
    assert "DATASET_SOURCE" not in producer                        # "" = the official URL
    assert producer["MONGO_URI"] == db["MONGO_URI"]
    assert producer["KAFKA_BOOTSTRAP_SERVERS"] == "10.56.0.13:9092"

    secure = env_file(rendered / "vm3-kafka" / "secure-iot-inference-consumer.env")
    assert secure["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert secure["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert secure["KAFKA_SASL_USERNAME"] == "iot-inference-consumer"     # its own user (test_kafka_security.py)
    assert secure["KAFKA_SASL_PASSWORD"] == "change-me-kafka-inference-consumer"
    assert secure["KAFKA_SSL_CAFILE"] == "/etc/iot-pipeline/kafka-ca.crt"


def test_the_model_engine_is_installed_where_the_model_runs_only(rendered):
    """iot_model_engine / iot_inference_mode: each VM installs what its processes import.  The
    service's group (the engine with Flask and Gunicorn: inference, or runtime-torch without
    TensorFlow) on the inference VMs with service; the engine alone (embedded-tensorflow,
    embedded-torch: no Flask, no Gunicorn, which the embedded consumer never imports) on the
    consumers' VM with embedded; neither anywhere else.  PyTorch's CPU build is installed
    first where torch is, and its pin is requirements/runtime-torch.txt's."""
    def groups(host, engine, mode):
        return json.loads((rendered / host / f"requirements-{engine}-{mode}.json").read_text())

    model = {("tensorflow", "service"): "inference", ("torch", "service"): "runtime-torch",
             ("tensorflow", "embedded"): "embedded-tensorflow", ("torch", "embedded"): "embedded-torch"}
    engine_package = {"tensorflow": "tensorflow-cpu", "torch": "torch"}
    for engine in ("tensorflow", "torch"):
        for mode, runs_it in (("service", "vm2-inference"), ("embedded", "vm3-kafka")):
            for host in ("vm1-producer", "vm2-inference", "vm2b-inference", "vm3-kafka", "vm4-mongodb"):
                chosen = groups(host, engine, mode)
                got = chosen["groups"]
                # what the groups install, -r includes followed
                packages = set().union(*(requirement_names(f"requirements/{g}.txt") for g in got))
                if host == runs_it or (host == "vm2b-inference" and runs_it == "vm2-inference"):
                    assert got[:2] == ["core", model[engine, mode]], (host, engine, mode, got)
                    assert engine_package[engine] in packages, (host, engine, mode, got)
                    assert not ({"tensorflow-cpu", "torch"} - {engine_package[engine]}) & packages, (host, engine, mode)
                    # the HTTP service's packages only where the service runs
                    assert ({"flask", "gunicorn"} <= packages) == (mode == "service"), (host, engine, mode, got)
                    assert chosen["installs_torch"] == (engine == "torch"), (host, engine, mode)
                else:
                    assert not set(model.values()) & set(got), (host, engine, mode, got)
                    assert not {"flask", "gunicorn", "tensorflow-cpu", "torch"} & packages, (host, engine, mode)
                    assert chosen["installs_torch"] is False, (host, engine, mode)
    assert groups("vm2-inference", "torch", "service")["torch_pin"] == "torch==2.13.0"
    env = groups("vm2-inference", "torch", "service")["inference_env"]
    assert env["MODEL_ENGINE"] == "torch" and env["MODEL"] == ""
    # embedded: the consumer runs the model with the service's settings and calls no URL
    consumer = env_file(rendered / "vm3-kafka" / "embedded-iot-inference-consumer.env")
    assert consumer["INFERENCE_MODE"] == "embedded" and consumer["MODEL_ENGINE"] == "torch"
    assert consumer["MODEL"] == "cifar10_resnet56" and consumer["MODEL_WEIGHTS"] == "auto"
    assert "INFERENCE_URL" not in consumer and "INFERENCE_TOKEN" not in consumer
    assert "INFERENCE_MODE" not in env_file(rendered / "vm3-kafka" / "iot-inference-consumer.env")
    config = yaml.safe_load((rendered / "vm4-mongodb" / "embedded-prometheus.yml").read_text())
    assert "inference" not in {c["job_name"] for c in config["scrape_configs"]}  # no service runs
def test_security_is_on_by_default(rendered):
    """Chameleon's sharednet1 is shared by every tenant: with the defaults every service
    wants credentials (Kafka SASL/SCRAM over TLS with ACLs, MongoDB, the inference API's
    token, Grafana's password) and the web UIs without a login of their own listen on
    loopback.  PLAINTEXT and no token are explicit switches (test below)."""
    settings = yaml.safe_load((ROOT / "inventory/group_vars/all/main.yml").read_text())
    assert settings["iot_kafka_security_enabled"] is True
    assert settings["iot_inference_auth_enabled"] is True
    assert yaml.safe_load((ROOT / "roles/iot_app/defaults/main.yml").read_text())["iot_app_mongodb_auth"] is True

    kafka = rendered / "vm3-kafka"
    props = properties(kafka / "default-server.properties")
    assert props["listeners"].startswith("SASL_SSL://10.56.0.13:9092")
    assert props["advertised.listeners"] == "SASL_SSL://10.56.0.13:9092"
    assert props["allow.everyone.if.no.acl.found"] == "false" and props["authorizer.class.name"]
    assert "PLAINTEXT" not in props["listener.security.protocol.map"].replace("CONTROLLER:PLAINTEXT", "")
    assert properties(kafka / "default-admin-client.properties")["security.protocol"] == "SASL_SSL"
    for name, user in (("iot-inference-consumer", "iot-inference-consumer"), ("iot-db-consumer", "iot-db-consumer")):
        env = env_file(kafka / f"{name}.env")
        assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-512")
        assert env["KAFKA_SASL_USERNAME"] == user and env["KAFKA_SASL_PASSWORD"].startswith("change-me-kafka-")
        assert env["KAFKA_SSL_CAFILE"] == "/etc/iot-pipeline/kafka-ca.crt"
    producer = env_file(rendered / "vm1-producer" / "iot-producer.env")
    assert (producer["KAFKA_SECURITY_PROTOCOL"], producer["KAFKA_SASL_USERNAME"]) == ("SASL_SSL", "iot-producer")
    # MongoDB: authorization on, the clients log in as the application user.
    assert yaml.safe_load((rendered / "vm4-mongodb" / "mongod.conf").read_text())["security"]["authorization"] == "enabled"
    assert producer["MONGO_URI"].startswith("mongodb://iot-app:change-me-mongodb-app@")
    # The inference API wants the vault's token, and the consumer sends it.
    token = yaml.safe_load(VAULT_EXAMPLE.read_text())["vault_inference_token"]
    assert env_file(rendered / "vm2-inference" / "iot-inference.env")["INFERENCE_TOKEN"] == token
    assert env_file(kafka / "iot-inference-consumer.env")["INFERENCE_TOKEN"] == token
    assert "INFERENCE_TOKEN" not in env_file(rendered / "vm2-inference" / "no-token-iot-inference.env")
    # Prometheus has no login: loopback only.  Grafana: loopback, a login for everything.
    mon = rendered / "vm4-mongodb"
    args = (mon / "prometheus.default").read_text()
    assert "--web.listen-address=127.0.0.1:9090" in args, args
    grafana = env_file(mon / "grafana.env")
    assert grafana["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == yaml.safe_load(VAULT_EXAMPLE.read_text())["vault_grafana_admin_password"]
    datasource = yaml.safe_load((mon / "grafana-datasource.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://127.0.0.1:9090"


def _security_checks(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([tool("ansible-playbook"), "-i", str(INVENTORY), str(DEPLOY / "security_checks.yaml"),
                             *extra], cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_the_switches_off_the_secure_default_warn_and_a_missing_secret_stops_the_deployment(tmp_path):
    """The roles' tasks/checks.yml (tests/deploy/security_checks.yaml): the defaults pass
    without a warning; Kafka PLAINTEXT and the API without a token pass with a WARNING each
    (kafka, its clients, inference); an empty secret of the secure default stops its role;
    a Kafka formatted with security off (the earlier default) is refused, not half-switched."""
    formatted = {}
    for name, props in (("plaintext", "listeners=PLAINTEXT://10.56.0.13:9092\n"),
                        ("secure", "sasl.enabled.mechanisms=SCRAM-SHA-512\n")):
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data" / "meta.properties").write_text("cluster.id=x\n")
        (tmp_path / name / "server.properties").write_text(props)
        formatted[name] = ("--limit", "vm3-kafka", "-e", f"kafka_data_dir={tmp_path / name / 'data'}",
                           "-e", f"kafka_config_dir={tmp_path / name}")
    runs = {"defaults": _security_checks(),
            "formatted plaintext": _security_checks(*formatted["plaintext"]),
            "formatted secure": _security_checks(*formatted["secure"]),
            "switches": _security_checks("-e", "iot_kafka_security_enabled=false",
                                         "-e", "iot_inference_auth_enabled=false"),
            "no token": _security_checks("-e", "vault_inference_token="),
            "no passwords": _security_checks("-e", "vault_mongodb_admin_password=",
                                             "-e", "vault_kafka_producer_password=")}
    out = {}
    for name, proc in runs.items():
        out[name] = (proc.communicate(timeout=600)[0], proc.returncode)
    text, rc = out["defaults"]
    assert rc == 0 and "WARNING:" not in text.replace("[WARNING]", ""), text[-3000:]
    text, rc = out["switches"]
    assert rc == 0, text[-3000:]
    assert "WARNING: iot_kafka_security_enabled is false: Kafka on 10.56.0.13:9092 speaks" in text
    assert "WARNING: the Kafka clients use PLAINTEXT (iot_kafka_security_enabled false)" in text
    assert "WARNING: iot_inference_auth_enabled is false: the inference API on 10.56.0.12:8000" in text
    text, rc = out["formatted plaintext"]
    assert rc != 0 and "was formatted with security off" in text, text[-3000:]
    text, rc = out["formatted secure"]
    assert rc == 0, text[-3000:]
    text, rc = out["no token"]
    assert rc != 0 and "Set vault_inference_token in the vault" in text, text[-3000:]
    assert re.search(r"^vm2-inference\s+:.*failed=1", text, re.M), text[-1500:]
    text, rc = out["no passwords"]
    assert rc != 0 and "Set vault_mongodb_admin_password and vault_mongodb_app_password" in text, text[-3000:]
    assert re.search(r"^vm3-kafka\s+:.*failed=1", text, re.M), text[-1500:]   # its message is no_log
    assert re.search(r"^vm4-mongodb\s+:.*failed=1", text, re.M), text[-1500:]


def test_every_vault_secret_is_documented():
    """Every secret the deployment reads from the vault is in vault.yml.example and named
    in docs/DEPLOY.md, so that the secure default can be filled in from the page."""
    example = set(yaml.safe_load(VAULT_EXAMPLE.read_text()))
    used = set()
    for path in [*(ROOT / "roles").rglob("*.yml"), *(ROOT / "roles").rglob("*.j2"),
                 *(ROOT / "inventory").rglob("*.yml"), *(ROOT / "playbooks").glob("*.yaml")]:
        # whole names only: not the pattern vault_kafka_*_password of a message
        used |= set(re.findall(r"\b(vault_[a-z0-9_]*[a-z0-9])(?![a-z0-9_*])", path.read_text()))
    assert used <= example, f"read from the vault, not in vault.yml.example: {sorted(used - example)}"
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert not [k for k in example if f"`{k}`" not in deploy], "vault keys not named in docs/DEPLOY.md"


def test_monitoring_scrapes_every_component_from_the_inventory(rendered):
    """The VMs' Prometheus (roles/monitoring, on the first mongodb host): one job per
    component with the inventory's addresses, the consumers serving their metrics on the
    ports it scrapes, a configuration promtool accepts; Grafana's password from the vault."""
    from tests.binaries import required_binary

    mon = rendered / "vm4-mongodb"
    config = yaml.safe_load((mon / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    assert jobs == {"inference": ["10.56.0.12:8000", "10.56.0.15:8000"],
                    "inference-consumer": ["10.56.0.13:9101"], "db-consumer": ["10.56.0.13:9102"],
                    "producer": [f"10.56.0.11:{p}" for p in range(9201, 9209)],
                    "prometheus": ["127.0.0.1:9090"]}
    producer = env_file(rendered / "vm1-producer" / "iot-producer.env")
    assert producer["PRODUCER_METRICS_PORTS"] == ",".join(str(p) for p in range(9201, 9209))
    assert producer["METRICS_BIND"] == "10.56.0.11"
    assert config["rule_files"] == ["/etc/prometheus/rules/pipeline.yml"]
    consumer = env_file(rendered / "vm3-kafka" / "iot-inference-consumer.env")
    db = env_file(rendered / "vm3-kafka" / "iot-db-consumer.env")
    assert (consumer["METRICS_PORT"], consumer["METRICS_BIND"]) == ("9101", "10.56.0.13")
    assert (db["METRICS_PORT"], db["METRICS_BIND"]) == ("9102", "10.56.0.13")
    assert env_file(mon / "grafana.env")["GF_SECURITY_ADMIN_PASSWORD"] == "change-me-grafana-admin"
    assert "--web.listen-address=127.0.0.1:9090" in (mon / "prometheus.default").read_text()   # loopback only
    assert not (rendered / "vm3-kafka" / "prometheus.yml").exists()      # one monitoring host
    out = run([required_binary("promtool"), "check", "config", "--syntax-only", str(mon / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr


# The promtool and prometheus flags the monitoring role may use, with the first Prometheus
# release that has them (prometheus/CHANGELOG.md).  A flag not listed fails the test below:
# add it with its release, so that it is checked against every supported image.
PROMETHEUS_FLAGS_SINCE = {
    "--web.listen-address": (1, 0),
    "--storage.tsdb.retention.time": (2, 7),   # 2.7.0 (before: --storage.tsdb.retention)
    "--syntax-only": (2, 33),                  # 2.33.0: promtool check config --syntax-only
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def test_monitoring_uses_only_what_every_supported_prometheus_has():
    """Ubuntu 22.04 ships Prometheus 2.31: `promtool check config --syntax-only` (2.33)
    failed the monitoring stage on the default image."""
    images = yaml.safe_load((ROOT / "roles/base/vars/main.yml").read_text())["base_image_facts"]
    versions = {release: facts["prometheus"] for release, facts in images.items()}
    assert set(versions) >= {"jammy", "noble"}, versions
    oldest = min(_version(v) for v in versions.values())
    role = ROOT / "roles" / "monitoring"
    used = []
    for f in sorted((role / "tasks").glob("*.yml")) + sorted((role / "handlers").glob("*.yml")):
        for task in _walk_tasks(yaml.safe_load(f.read_text())):
            for args in task.values():
                if isinstance(args, dict) and "validate" in args:
                    used.append((f.name, task["name"], args["validate"]))
    used.append(("prometheus.default.j2", "ARGS", (role / "templates/prometheus.default.j2").read_text()))
    assert any("promtool check config" in text for _, _, text in used)
    for where, name, text in used:
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*", text):
            assert flag in PROMETHEUS_FLAGS_SINCE, f"{where} / {name}: {flag} is not in PROMETHEUS_FLAGS_SINCE"
            assert PROMETHEUS_FLAGS_SINCE[flag] <= oldest, (
                f"{where} / {name}: {flag} needs Prometheus {PROMETHEUS_FLAGS_SINCE[flag]}, the oldest supported "
                f"image has {oldest} ({versions})")


def test_a_monitoring_failure_is_reported_and_not_fatal():
    """The monitoring play has one host: a failed task ended the whole playbook before the
    experiment.  Every task is inside one block whose rescue says what failed; nothing is
    ignored wholesale; the handlers do not restart after a failure; the last stage repeats it."""
    role = ROOT / "roles" / "monitoring"
    main = yaml.safe_load((role / "tasks/main.yml").read_text())
    assert len(main) == 1 and {"block", "rescue"} <= set(main[0]), main
    rescue = main[0]["rescue"]
    assert "ansible_failed_task.name" in json.dumps(rescue) and "ansible_failed_result" in json.dumps(rescue)
    included = {t["ansible.builtin.include_tasks"] for t in main[0]["block"] if "ansible.builtin.include_tasks" in t}
    assert included == {"prometheus.yml", "grafana.yml"}
    for f in [*(role / "tasks").glob("*.yml"), role / "handlers/main.yml"]:
        tasks = list(_walk_tasks(yaml.safe_load(f.read_text())))
        assert not [t["name"] for t in tasks if t.get("ignore_errors") or t.get("failed_when") in (False, "false")], f
    for handler in yaml.safe_load((role / "handlers/main.yml").read_text()):
        assert "monitoring_failure is undefined" in handler["when"], handler["name"]
    analyze = yaml.safe_load((ROOT / "playbooks/analyze.yaml").read_text())[0]["tasks"]
    assert any("monitoring_failure" in json.dumps(t) for t in analyze)


def _walk_tasks(node):
    """Every task dict of a task list, blocks included."""
    for task in node or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _walk_tasks(task.get(key))


def _role_values() -> dict:
    """The shared iot_* settings and every role's defaults (literal values only matter here)."""
    values = dict(yaml.safe_load((ROOT / "inventory/group_vars/all/main.yml").read_text()) or {})
    for role in ROLES:
        values.update(yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text()) or {})
    return values


def test_every_port_a_role_opens_in_ufw_is_open_in_the_security_group():
    """The metrics ports (consumers 9101/9102, producers 9201-9208), Prometheus (9090) and
    Grafana (3000) were opened in ufw only: Neutron dropped Prometheus's scrapes between VMs."""
    values = _role_values()
    group = set()
    for entry in values["provision_internal_ports"]:
        group |= set(range(int(entry["port"]), int(entry.get("port_max", entry["port"])) + 1))
    opened: dict[int, str] = {}
    for f in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        for task in _walk_tasks(yaml.safe_load(f.read_text())):
            ufw = task.get("community.general.ufw")
            if not isinstance(ufw, dict) or "port" not in ufw:
                continue
            text = f"{ufw['port']} {task.get('loop', '')}"
            ports = [int(p) for p in re.findall(r"^\d+$", str(ufw["port"]))]
            for name in re.findall(r"\b([a-z][a-z0-9_]*_ports?)\b", text):
                value = values[name]
                ports += [int(v) for v in (value if isinstance(value, list) else [value])]
            assert ports, f"{f.relative_to(ROOT)}: {task['name']}: no port found in {text!r}"
            opened.update({port: f"{f.relative_to(ROOT)}: {task['name']}" for port in ports})
    assert {9090, 3000, 9101, 9102, 9201, 9208, 8000, 9092, 27017} <= set(opened), sorted(opened)
    missing = {port: where for port, where in opened.items() if port not in group}
    assert not missing, f"open in ufw, not in provision_internal_ports: {missing}"
    # between the pipeline's own VMs only (remote_group), as the other service ports
    assert values["provision_internal_source"] == "group"


def test_logging_files(rendered):
    rsyslog = (rendered / "vm3-kafka" / "rsyslog-iot-pipeline.conf").read_text()
    for program in ("iot-inference", "iot-inference-consumer", "iot-db-consumer", "iot-producer"):
        assert f"if $programname == '{program}' then /var/log/iot-pipeline/{program}.log" in rsyslog
    journald = unit_like = (rendered / "vm3-kafka" / "journald-iot.conf").read_text()
    assert "ForwardToSyslog=yes" in journald and unit_like.count("[Journal]") == 1
    assert "server ntp.example.org iburst" in (rendered / "vm3-kafka" / "chrony-iot.conf").read_text()


def test_provisioned_inventory_parses(rendered):
    deploy = rendered / "vm1-producer" / "fresh-clone" / ".deploy"
    inventory, ssh_config = deploy / "hosts.yml", deploy / "iot-pipeline" / "ssh_config"
    # Created by the role in a clone where .deploy/ did not exist; private to the user.
    for folder in (deploy, deploy / "iot-pipeline"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for f in (inventory, ssh_config):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    exe = tool("ansible-inventory")
    result = run([exe, "-i", str(inventory), "--list"])
    assert result.returncode == 0, result.stderr
    inv = json.loads(result.stdout)
    assert inv["producers"]["hosts"] == ["iot-pipeline-producer"]
    assert inv["inference"]["hosts"] == ["iot-pipeline-inference"]
    assert inv["kafka"]["hosts"] == inv["consumers"]["hosts"] == ["iot-pipeline-kafka"]
    assert inv["mongodb"]["hosts"] == ["iot-pipeline-mongodb"]
    hostvars = inv["_meta"]["hostvars"]
    for name, ip in (("iot-pipeline-producer", "10.56.0.11"), ("iot-pipeline-inference", "10.56.0.12"),
                     ("iot-pipeline-kafka", "10.56.0.13"), ("iot-pipeline-mongodb", "10.56.0.14")):
        assert hostvars[name]["iot_private_ip"] == ip
        assert hostvars[name]["ansible_ssh_common_args"] == f"-F {ssh_config}"
        assert hostvars[name]["iot_private_cidr"] == "10.56.0.0/22"


def test_ssh_config_reaches_every_vm_through_the_jump_host_with_its_own_known_hosts(rendered):
    """Parsed by OpenSSH itself (ssh -G): the jump host by its floating IP, the others by their
    private IP through it, each with the deployment's known_hosts (removed on teardown)."""
    ssh = required_binary("ssh", "openssh-client")
    deploy = rendered / "vm1-producer" / "fresh-clone" / ".deploy" / "iot-pipeline"
    want = {"iot-pipeline-producer": ("129.114.27.10", None), "iot-pipeline-inference": ("10.56.0.12", "iot-pipeline-producer"),
            "iot-pipeline-kafka": ("10.56.0.13", "iot-pipeline-producer"),
            "iot-pipeline-mongodb": ("10.56.0.14", "iot-pipeline-producer")}
    for name, (hostname, jump) in want.items():
        out = run([ssh, "-G", "-F", str(deploy / "ssh_config"), name])
        assert out.returncode == 0, out.stderr
        opts = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
        assert opts["hostname"] == hostname and opts["user"] == "cc"
        assert opts.get("proxyjump") == jump
        assert opts["userknownhostsfile"] == str(deploy / "known_hosts")
        assert opts["stricthostkeychecking"] in ("accept-new", "accept-new\n")


def test_experiment_defaults(rendered):
    """rate 0: the experiment measures the capacity first and picks the rate (no --rate)."""
    settings = json.loads((rendered / "vm1-producer" / "experiment.json").read_text())
    assert settings == {"producers": [1, 2, 3, 4], "images": 200, "rate": 0}


# ----------------------------------------------------------------------- check mode

def test_application_roles_in_check_mode(rendered):
    exe = tool("ansible-playbook")
    result = run([exe, "--check", "--diff", "-i", str(INVENTORY), str(DEPLOY / "check_mode.yaml")],
                 env=ansible_env(IOT_RENDER_OUT=str(rendered)))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    recap = dict(re.findall(r"^(vm\S+)\s+:\s+(ok=.*)$", out, re.M))
    assert set(recap) == {"vm1-producer", "vm2-inference", "vm3-kafka"}, out[-3000:]
    for host, line in recap.items():
        assert "failed=0" in line and "unreachable=0" in line, (host, line)
    # the units would be written (shown as diffs), with the host's values; the env files
    # hold secrets (INFERENCE_TOKEN, passwords) and are written with no_log: never shown
    assert "TASK [inference : Write the inference service's environment file]" in out
    assert "+INFERENCE_BIND=" not in out and "INFERENCE_TOKEN=" not in out
    assert "-m consumers.db" in out and "-m consumers.inference" in out      # unit diffs (env files are no_log)
    assert "TASK [producer : Install the producer template unit]" in out
    assert "RUNNING HANDLER [inference : Restart iot-inference]" in out


def test_store_roles_in_check_mode(tmp_path):
    """The postgresql and couchdb roles in check mode on this machine: their argument specs
    validate with the inventory's values, every task that can run without the server
    passes, the secrets stay hidden.  (PostgreSQL runs for real in the deploy rehearsal
    with -e iot_store=postgres; CouchDB's repository is out of reach everywhere here.)"""
    key = tmp_path / "couchdb-keys.asc"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n(stand-in)\n-----END PGP PUBLIC KEY BLOCK-----\n")
    exe = tool("ansible-playbook")
    result = run([exe, "--check", "--diff", "-i", str(INVENTORY), str(DEPLOY / "check_stores.yaml"),
                  "-e", f"couchdb_apt_key_url=file://{key}"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert re.search(r"^vm4-mongodb\s+:\s+ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0", out, re.M), out[-3000:]
    for role in ("postgresql", "couchdb"):
        assert re.search(rf"TASK \[{role} : Validating arguments against arg spec 'main'.*\]\s+\*+\nok:", out), role
    assert "TASK [couchdb : Answer the installer's questions" in out
    assert "change-me" not in out                                   # no_log on every secret


# ----------------------------------------------------------------------- structure

def test_master_playbook_imports_every_stage_with_its_tag():
    plays = yaml.safe_load((ROOT / "playbook_master.yaml").read_text())
    assert [p["tags"] for p in plays] == [[s] for s in STAGES]
    for play, stage in zip(plays, STAGES):
        target = ROOT / play["ansible.builtin.import_playbook"]
        assert target == ROOT / "playbooks" / f"{stage}.yaml" and target.exists()
        # iot_deploy_target picks the VM stages or the k8s one; provision and base are shared
        expected = {"provision": None, "base": None,
                    "k8s": "iot_deploy_target | default('vms') == 'k8s'"}.get(
                        stage, "iot_deploy_target | default('vms') == 'vms'")
        assert play.get("when") == expected, (stage, play.get("when"))


def test_argument_specs_cover_every_default():
    for role in ROLES:
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text()) or {}
        specs = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
        options = specs["argument_specs"]["main"]["options"]
        assert set(defaults) == set(options), (role, set(defaults) ^ set(options))
        for name, option in options.items():
            assert name.startswith(role + "_"), (role, name)           # role-prefixed names
            assert option["description"] and option["type"], (role, name)
        for handler_dir in ("handlers", "templates", "tasks", "meta"):
            if role in ("provision", "experiment", "base") and handler_dir == "templates":
                continue
            if role == "k8s" and handler_dir in ("templates", "handlers"):  # kubernetes.core only
                continue
            assert (ROOT / "roles" / role / handler_dir).is_dir(), (role, handler_dir)


def _tasks(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())


def test_teardown_deletes_what_provisioning_creates():
    created = {(next(k for k in t if k.startswith("openstack.cloud.")), str(t[next(k for k in t if k.startswith("openstack.cloud."))].get("name")))
               for t in _tasks(ROOT / "roles/provision/tasks/main.yml")
               if any(k.startswith("openstack.cloud.") for k in t)
               and t[next(k for k in t if k.startswith("openstack.cloud."))].get("state") == "present"}
    deleted = {}
    for t in _tasks(ROOT / "roles/provision/tasks/teardown.yml"):
        module = next((k for k in t if k.startswith("openstack.cloud.")), None)
        if module:
            assert t[module]["state"] == "absent"
            assert t[module]["cloud"] == "{{ provision_cloud }}"
            deleted[module] = t[module]
    for module, name in created:
        if module in ("openstack.cloud.security_group_rule", "openstack.cloud.floating_ip"):
            continue  # rules go with their group; the floating IP with its server (delete_ips)
        assert module in deleted and str(deleted[module]["name"]) == name, (module, name)
    assert deleted["openstack.cloud.server"]["delete_ips"] is True
    # every cloud call names the cloud from clouds.yaml: no inline credentials anywhere
    for path in (ROOT / "roles").rglob("*.yml"):
        assert "auth_url" not in path.read_text() and "application_credential_secret" not in path.read_text(), path


TASK_KEYWORDS = {"name", "when", "loop", "loop_control", "register", "notify", "listen", "become",
                 "become_user", "delegate_to", "delegate_facts", "run_once", "changed_when", "failed_when",
                 "no_log", "tags", "vars", "environment", "async", "poll", "retries", "delay", "until",
                 "check_mode", "ignore_errors", "block", "rescue", "always", "args"}


def test_modules_are_fully_qualified():
    """Every task and handler calls its module by FQCN (ansible.builtin.*, openstack.cloud.* ...)."""
    def walk(tasks, path):
        for task in tasks or []:
            for key in ("block", "rescue", "always"):
                walk(task.get(key), path)
            modules = [k for k in task if k not in TASK_KEYWORDS]
            assert len(modules) <= 1, (path, task.get("name"), modules)
            for module in modules:
                assert module.count(".") >= 2, (path, task.get("name"), module)

    files = [*(ROOT / "roles").rglob("tasks/*.yml"), *(ROOT / "roles").rglob("handlers/*.yml")]
    assert len(files) > 15
    for path in files:
        walk(yaml.safe_load(path.read_text()), path)
    for path in (ROOT / "playbooks").glob("*.yaml"):
        for play in yaml.safe_load(path.read_text()):
            walk(play.get("tasks"), path)


def test_secrets_stay_out_of_git():
    for name in ("inventory/group_vars/all/vault.yml", "inventory/group_vars/all/local.yml", "clouds.yaml",
                 ".deploy/hosts.yml", ".deploy/iot-pipeline/pki/ca.key", ".deploy/iot-pipeline/known_hosts",
                 ".venv-deploy/bin/python"):
        result = run(["git", "check-ignore", "-q", name], env=dict(os.environ))
        assert result.returncode == 0, f"{name} is not git-ignored"
    example = yaml.safe_load(VAULT_EXAMPLE.read_text())
    assert set(example) == {"vault_mongodb_admin_password", "vault_mongodb_app_password",
                            "vault_kafka_admin_password", "vault_kafka_producer_password",
                            "vault_kafka_inference_consumer_password", "vault_kafka_db_consumer_password",
                            "vault_kafka_dlq_password", "vault_inference_token", "vault_grafana_admin_password",
                            "vault_postgresql_app_password", "vault_couchdb_admin_password",
                            "vault_couchdb_app_password"}


def test_argument_specs_match_the_defaults_and_are_written_for_people():
    """tests/deploy/gen_argument_specs.py --check: every default documented with its exact
    value, a type and a real description; computed values (vars/) are not inputs."""
    proc = subprocess.run([sys.executable, "tests/deploy/gen_argument_specs.py", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
