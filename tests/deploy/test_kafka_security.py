"""Kafka security of the deployment (docs/RELIABILITY.md, "Kafka security"), offline.

* The ACLs the kafka role grants (roles/kafka/vars/main.yml ``kafka_acls``) are exactly
  the ones derived here from the code: topic names from ``common.settings.KafkaSettings``,
  consumer groups from the ``GROUP_ID`` constants, idempotence from what
  ``common.kafka_io.make_producer`` hands kafka-python.
* server.properties with security on (rendered by render_templates.yaml, one broker and
  three): no ANONYMOUS, no access without an ACL, the controller listener on TLS with client
  certificates mapped to the brokers' principals, the only super users.
* The ufw rule of the controller port names the other Kafka hosts only.
* Every client's environment file logs in as its own user.
* tasks/acls.yml run twice against a stand-in kafka-acls.sh: the first run adds only what
  is missing, the second adds nothing.

What this cannot show is a real broker refusing a principal: no Apache Kafka can be
downloaded here and the embedded broker (tansu) has no ACLs.  The manual check on the VMs
is in docs/RELIABILITY.md.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.binaries import required_module, venv_tool

yaml = required_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "tests" / "deploy"
INVENTORY = DEPLOY / "inventory.yml"
KAFKA_ROLE = ROOT / "roles" / "kafka"
SETTINGS = yaml.safe_load((ROOT / "inventory/group_vars/all/main.yml").read_text())
VAULT = yaml.safe_load((ROOT / "inventory/group_vars/all/vault.yml.example").read_text())
TEST_HOSTS = yaml.safe_load(INVENTORY.read_text())["all"]["hosts"]
COMPONENTS = ("producer", "inference_consumer", "db_consumer", "dlq")
# The three-broker render of render_templates.yaml: vm3-kafka and two others.
THREE_BROKERS = ["vm3-kafka", "vm2-inference", "vm4-mongodb"]


def tool(name: str) -> str:
    return venv_tool(name)  # requirements-deploy.txt, part of make venv's requirements.txt


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def properties(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key not in values, (path.name, line)
            values[key.strip()] = value.strip()
    return values


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#"))


# ----------------------------------------------------------- what the code needs

def username(component: str) -> str:
    return SETTINGS[f"iot_kafka_{component}_username"]


def producers_are_idempotent(monkeypatch) -> bool:
    """Whether the producers every component makes (common.kafka_io.make_producer) are
    idempotent: kafka-python's default, unless the config turns it off or conflicts with it."""
    import common.kafka_io as kafka_io
    from common.settings import KafkaSettings
    from kafka import KafkaProducer

    seen: dict = {}
    monkeypatch.setattr(kafka_io, "KafkaProducer", lambda **cfg: seen.update(cfg))
    kafka_io.make_producer(KafkaSettings())
    if "enable_idempotence" in seen:
        return bool(seen["enable_idempotence"])
    # kafka-python >= 2.1 (KIP-679): on by default, silently off with a conflicting setting.
    return (bool(KafkaProducer.DEFAULT_CONFIG.get("enable_idempotence", False))
            and seen.get("acks", "all") in ("all", -1)
            and seen.get("retries", 1) != 0
            and seen.get("max_in_flight_requests_per_connection", 5) <= 5)


def expected_acls(monkeypatch) -> set[tuple[str, str, str, str]]:
    """(principal, resource type, name, operation) of every ACL the code needs, no more."""
    from common.settings import KafkaSettings
    import consumers.db
    import consumers.dlq
    import consumers.dlq_entries
    import consumers.inference
    import consumers.replay
    import producer.camera
    import producer.sending

    fields = KafkaSettings.model_fields
    images, results, dlq = (fields[f].default for f in ("images_topic", "results_topic", "dlq_topic"))
    # Every writer makes its producer with common.kafka_io.make_producer.
    for module in (producer.sending, consumers.inference, consumers.db, consumers.replay):
        assert "make_producer(" in inspect.getsource(module), module.__name__
    # The producers' result listener reads by manual assignment: no group.
    assert re.search(r"make_consumer\([^)]*group_id=None", inspect.getsource(producer.camera))
    # So does the DLQ tool (it reads the topic in consumers/dlq_entries.py), unless it names a group.
    dlq_group = getattr(consumers.dlq, "GROUP_ID", None)
    if not dlq_group:
        assert "group_id=None" in inspect.getsource(consumers.dlq_entries)

    acls: set[tuple[str, str, str, str]] = set()

    def grant(component: str, resource_type: str, name: str, *operations: str) -> None:
        for operation in operations:
            acls.add((f"User:{username(component)}", resource_type, name, operation))

    # producer/sending.py: images out; producer/camera.py: results back (metadata, end offsets, fetch).
    grant("producer", "Topic", images, "Write", "Describe")
    grant("producer", "Topic", results, "Read", "Describe")
    # consumers/inference.py: images in as its group; results and dead letters out.
    grant("inference_consumer", "Topic", images, "Read")
    grant("inference_consumer", "Group", consumers.inference.GROUP_ID, "Read")
    grant("inference_consumer", "Topic", results, "Write")
    grant("inference_consumer", "Topic", dlq, "Write")
    # consumers/db.py: images and results in as its group; dead letters out.
    grant("db_consumer", "Topic", images, "Read")
    grant("db_consumer", "Topic", results, "Read")
    grant("db_consumer", "Group", consumers.db.GROUP_ID, "Read")
    grant("db_consumer", "Topic", dlq, "Write")
    # consumers/dlq.py (dlq_entries, replay): the DLQ in; replays back to the images or results topic.
    grant("dlq", "Topic", dlq, "Read")
    if dlq_group:
        grant("dlq", "Group", dlq_group, "Read")
    grant("dlq", "Topic", images, "Write")
    grant("dlq", "Topic", results, "Write")
    if producers_are_idempotent(monkeypatch):
        for writer in COMPONENTS:
            grant(writer, "Cluster", "kafka-cluster", "IdempotentWrite")
    return acls


def test_the_code_and_the_inventory_name_the_same_topics():
    from common.settings import KafkaSettings

    fields = KafkaSettings.model_fields
    for topic in ("images", "results", "dlq"):
        assert SETTINGS[f"iot_{topic}_topic"] == fields[f"{topic}_topic"].default


def test_the_code_makes_idempotent_producers(monkeypatch):
    """acks=all and kafka-python's default idempotence: IdempotentWrite is part of the set."""
    assert producers_are_idempotent(monkeypatch)


# ----------------------------------------------------------------- rendered files

@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kafka-security-render")
    result = subprocess.run([tool("ansible-playbook"), "-i", str(INVENTORY), "--limit", "vm1-producer,vm3-kafka",
                             str(DEPLOY / "render_templates.yaml")], cwd=ROOT, capture_output=True, text=True,
                            env=ansible_env(IOT_RENDER_OUT=str(out)), timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


def record(rendered: Path, suffix: str = "") -> dict:
    return json.loads((rendered / "vm3-kafka" / f"kafka-security{suffix}.json").read_text())


def acl_set(rec: dict) -> set[tuple[str, str, str, str]]:
    acls = [(a["principal"], a["resource_type"], a["name"], a["operation"]) for a in rec["acls"]]
    assert len(acls) == len(set(acls)), "an ACL is listed twice"
    return set(acls)


def test_the_role_grants_exactly_the_acls_the_code_needs(rendered, monkeypatch):
    want = expected_acls(monkeypatch)
    for suffix in ("", "-3"):
        got = acl_set(record(rendered, suffix))
        assert got == want, {"missing": sorted(want - got), "extra": sorted(got - want)}


def test_one_scram_user_per_component_and_no_shared_one(rendered):
    rec = record(rendered)
    names = [username(c) for c in COMPONENTS]
    assert rec["scram_usernames"] == names
    assert len(set(names + [rec["admin_username"]])) == len(names) + 1
    assert not any(k.startswith("iot_kafka_app_") for k in SETTINGS), "the shared app user is back"
    # every principal with an ACL is one of these users, never the admin or a broker
    principals = {a["principal"] for a in rec["acls"]}
    assert principals == {f"User:{n}" for n in names}
    # the vault example has one password per user, and the inventory reads it from there
    for component in COMPONENTS:
        assert f"vault_kafka_{component}_password" in VAULT
        assert SETTINGS[f"iot_kafka_{component}_password"] == f"{{{{ vault_kafka_{component}_password }}}}"
    assert {k for k in VAULT if k.startswith("vault_kafka_")} == (
        {"vault_kafka_admin_password"} | {f"vault_kafka_{c}_password" for c in COMPONENTS})


def mapped_principal(rules: str, distinguished_name: str) -> str | None:
    """Kafka's SslPrincipalMapper for RULE:pattern/replacement/ rules (no DEFAULT: no match, refused)."""
    for rule in re.findall(r"RULE:((?:\\/|[^/])*)/((?:\\/|[^/])*)/[LU]?", rules):
        match = re.fullmatch(rule[0], distinguished_name)
        if match:
            return match.expand(re.sub(r"\$(\d+)", r"\\g<\1>", rule[1]))
    return None


@pytest.mark.parametrize("render, brokers", [("secure-server.properties", ["vm3-kafka"]),
                                             ("secure3-server.properties", THREE_BROKERS)])
def test_secure_server_properties(rendered, render, brokers):
    props = properties(rendered / "vm3-kafka" / render)
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    protocols = dict(entry.split(":") for entry in props["listener.security.protocol.map"].split(","))
    assert protocols == {"CONTROLLER": "SSL", "SASL_SSL": "SASL_SSL"}
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["ssl.keystore.location"] and props["ssl.truststore.location"]
    # the brokers' certificates (CN=<inventory host>, tasks/tls.yml) map to their principals ...
    rules = props["listener.name.controller.ssl.principal.mapping.rules"]
    assert "DEFAULT" not in rules
    for host in brokers:
        assert mapped_principal(rules, f"CN={host}") == host
    # ... and nothing else does
    assert mapped_principal(rules, "CN=vm3-kafka,O=elsewhere") is None
    assert props["super.users"].split(";") == ["User:iot-admin"] + [f"User:{h}" for h in brokers]
    assert set(props["controller.quorum.voters"].split(",")) == {
        f"{i}@{TEST_HOSTS[h]['iot_private_ip']}:9093" for i, h in enumerate(brokers, 1)}
    replicas = min(len(brokers), 3)
    assert props["default.replication.factor"] == str(replicas)
    assert props["min.insync.replicas"] == str(max(replicas - 1, 1))


def test_broker_certificates_carry_the_host_name():
    tasks = yaml.safe_load((KAFKA_ROLE / "tasks/tls.yml").read_text())
    csr = next(t for t in tasks if t["name"] == "Create the broker signing request")
    assert csr["community.crypto.openssl_csr_pipe"]["common_name"] == "{{ inventory_hostname }}"
    assert "clientAuth" in csr["community.crypto.openssl_csr_pipe"]["extended_key_usage"]


def test_no_anonymous_super_user_anywhere(rendered):
    files = [rendered / "vm3-kafka" / f for f in ("server.properties", "secure-server.properties",
                                                  "secure3-server.properties", "secure-admin-client.properties")]
    files += [p for p in KAFKA_ROLE.rglob("*") if p.is_file()]
    for path in files:
        assert "ANONYMOUS" not in path.read_text(), path


def test_plaintext_keeps_todays_listeners(rendered):
    props = properties(rendered / "vm3-kafka" / "server.properties")
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert "super.users" not in props and "authorizer.class.name" not in props


# ----------------------------------------------------------------------- firewall

def ufw_tasks() -> list[dict]:
    tasks = yaml.safe_load((KAFKA_ROLE / "tasks/main.yml").read_text())
    return [t for t in tasks if "community.general.ufw" in t]


def test_the_controller_port_is_opened_to_the_kafka_hosts_only(rendered):
    allow = [t for t in ufw_tasks() if not t["community.general.ufw"].get("delete")]
    controller = [t for t in allow if "kafka_controller_port" in t["community.general.ufw"]["port"]]
    assert len(controller) == 1, controller
    task = controller[0]
    assert task["community.general.ufw"]["from_ip"] == "{{ item }}"
    assert task["loop"] == "{{ kafka_controller_firewall_sources }}"
    assert "kafka_security_enabled" not in str(task.get("when"))        # security on or off
    for other in allow:
        if other is not task:
            assert "kafka_controller_port" not in json.dumps(other), other["name"]
    client = [t for t in allow if "kafka_port" in t["community.general.ufw"]["port"]]
    assert len(client) == 1 and client[0]["loop"] == "{{ kafka_firewall_sources }}"
    # the wide rule of earlier versions is deleted
    delete = [t for t in ufw_tasks() if t["community.general.ufw"].get("delete")]
    assert len(delete) == 1
    assert "kafka_controller_port" in delete[0]["community.general.ufw"]["port"]
    assert delete[0]["loop"] == "{{ kafka_firewall_sources | difference(kafka_controller_firewall_sources) }}"
    # one broker: nobody else (it reaches itself over the loopback); three: the two others
    assert record(rendered)["controller_firewall_sources"] == []
    three = record(rendered, "-3")
    assert three["controller_firewall_sources"] == [TEST_HOSTS[h]["iot_private_ip"] for h in THREE_BROKERS[1:]]
    assert three["client_firewall_sources"] == ["10.56.0.0/22"]


# ---------------------------------------------------------------------- env files

def test_every_client_logs_in_as_its_own_user(rendered):
    files = {"producer": rendered / "vm1-producer" / "secure-iot-producer.env",
             "inference_consumer": rendered / "vm3-kafka" / "secure-iot-inference-consumer.env",
             "db_consumer": rendered / "vm3-kafka" / "secure-iot-db-consumer.env",
             "dlq": rendered / "vm3-kafka" / "secure-iot-dlq.env"}
    seen = set()
    for component, path in files.items():
        env = env_file(path)
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", path
        assert env["KAFKA_SASL_USERNAME"] == username(component), path
        assert env["KAFKA_SASL_PASSWORD"] == VAULT[f"vault_kafka_{component}_password"], path
        seen.add(env["KAFKA_SASL_USERNAME"])
    assert seen == set(record(rendered)["scram_usernames"])
    # the DLQ tool reaches MongoDB too (replays are looked up and recorded there)
    assert env_file(files["dlq"])["MONGO_URI"].startswith("mongodb://")
    # the defaults are these files; the switch for a benchmark (PLAINTEXT) leaves out every credential
    for name in ("iot-producer", "iot-inference-consumer", "iot-db-consumer", "iot-dlq"):
        host = "vm1-producer" if name == "iot-producer" else "vm3-kafka"
        assert env_file(rendered / host / f"{name}.env") == env_file(rendered / host / f"secure-{name}.env"), name
    for plain in (rendered / "vm1-producer" / "plaintext-iot-producer.env", rendered / "vm3-kafka" / "plaintext-iot-dlq.env",
                  rendered / "vm3-kafka" / "plaintext-iot-inference-consumer.env",
                  rendered / "vm3-kafka" / "plaintext-iot-db-consumer.env"):
        assert env_file(plain)["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT", plain
        assert not any(k.startswith("KAFKA_SASL_") for k in env_file(plain)), plain
    # the experiment runs its producers with the producer's file (and user)
    experiment = yaml.safe_load((ROOT / "roles/experiment/vars/main.yml").read_text())
    assert "{{ producer_unit_name" in experiment["experiment_environment_file"]


# Templates that hold a password (the admin's in the properties, the clients' in the env files).
SECRET_TEMPLATES = ("server.properties.j2", "admin-client.properties.j2", "service.env.j2")


def test_tasks_that_carry_passwords_hide_them():
    checked = 0
    for path in [*(KAFKA_ROLE / "tasks").glob("*.yml"), ROOT / "roles/consumers/tasks/main.yml",
                 ROOT / "roles/producer/tasks/main.yml"]:
        for task in yaml.safe_load(path.read_text()):
            if "ansible.builtin.assert" in task:          # prints expressions, not values
                continue
            body = json.dumps({k: v for k, v in task.items() if k not in ("name", "when")})
            if "password" in body or any(t in body for t in SECRET_TEMPLATES):
                checked += 1
                assert task.get("no_log") not in (None, False), (path.name, task["name"])
    assert checked >= 7


# ------------------------------------------------------------ ACLs, idempotently

FAKE_KAFKA_ACLS = '''#!{python}
"""Stand-in for kafka-acls.sh (Kafka 3.9): --list prints the ACLs kept in ../acls.json as
the real one does; --add adds one.  Every call is logged to ../calls.log."""
import json, re, sys
from pathlib import Path

STATE = Path(__file__).resolve().parent.parent / "acls.json"
args = sys.argv[1:]
with STATE.with_name("calls.log").open("a") as log:
    log.write(json.dumps(args) + "\\n")


def opt(name):
    return args[args.index(name) + 1] if name in args else None


assert opt("--bootstrap-server") and opt("--command-config"), args
acls = json.loads(STATE.read_text())
if "--list" in args:
    resources = {{}}
    for a in acls:
        resources.setdefault((a["type"], a["name"]), []).append(a)
    for (kind, name), entries in resources.items():
        lines = "\\n".join(f"\\t(principal={{a['principal']}}, host=*, operation={{a['operation']}}, "
                          f"permissionType=ALLOW)" for a in entries)
        print(f"Current ACLs for resource `ResourcePattern(resourceType={{kind}}, name={{name}}, "
              f"patternType=LITERAL)`: \\n {{lines}} \\n")
elif "--add" in args:
    operation = opt("--operation")
    assert operation in ("Read", "Write", "Describe", "IdempotentWrite"), operation
    assert opt("--resource-pattern-type") == "literal" and opt("--allow-host") == "*", args
    kinds = [k for k in ("--topic", "--group", "--cluster") if k in args]
    assert len(kinds) == 1, args
    if kinds[0] == "--cluster":
        assert args[-1] == "--cluster", args          # the cluster takes no name
        kind, name = "CLUSTER", "kafka-cluster"
    else:
        kind, name = kinds[0][2:].upper(), opt(kinds[0])
    entry = {{"type": kind, "name": name, "principal": opt("--allow-principal"),
             "operation": re.sub(r"([a-z])([A-Z])", r"\\1_\\2", operation).upper()}}
    if entry not in acls:
        acls.append(entry)
    STATE.write_text(json.dumps(acls))
    print(f"Adding ACLs for resource `ResourcePattern(resourceType={{kind}}, name={{name}}, patternType=LITERAL)`:")
else:
    sys.exit(2)
'''


def as_listed(acl: tuple[str, str, str, str]) -> dict:
    principal, kind, name, operation = acl
    return {"type": kind.upper(), "name": name, "principal": principal,
            "operation": re.sub(r"([a-z])([A-Z])", r"\1_\2", operation).upper()}


def test_acls_are_added_once_and_only_when_missing(tmp_path, monkeypatch):
    want = [as_listed(a) for a in sorted(expected_acls(monkeypatch))]
    home = tmp_path / "kafka"
    (home / "bin").mkdir(parents=True)
    script = home / "bin" / "kafka-acls.sh"
    script.write_text(FAKE_KAFKA_ACLS.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    present = want[0]
    stranger = {"type": "TOPIC", "name": "elsewhere", "principal": "User:someone", "operation": "READ"}
    # the same principal and operation on another resource does not count as present
    near_miss = dict(want[1], name="not-" + want[1]["name"])
    (home / "acls.json").write_text(json.dumps([present, stranger, near_miss]))

    def apply() -> str:
        result = subprocess.run([tool("ansible-playbook"), "-i", str(INVENTORY), str(DEPLOY / "kafka_acls.yaml")],
                                cwd=ROOT, capture_output=True, text=True, timeout=600,
                                env=ansible_env(IOT_FAKE_KAFKA_HOME=str(home)))
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result.stdout

    def adds() -> list[list[str]]:
        calls = [json.loads(line) for line in (home / "calls.log").read_text().splitlines()]
        return [c for c in calls if "--add" in c]

    apply()
    first = adds()
    assert len(first) == len(want) - 1                          # the one present is not added again
    state = json.loads((home / "acls.json").read_text())
    assert sorted(map(json.dumps, state)) == sorted(map(json.dumps, want + [stranger, near_miss]))

    second = apply()
    assert adds() == first                                       # nothing added the second time
    assert re.search(r"^vm3-kafka\s+:.*changed=0", second, re.M), second[-2000:]
