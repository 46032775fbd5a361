"""deploy/k8s/ (in make test, no cluster needed): every overlay builds with `kubectl
kustomize`; the built-in kinds pass kubernetes-validate --strict; the custom resources
(Strimzi, KEDA) pass the JSON schemas of their CRDs in ../shared/schemas/crds; and the
manifests agree with the code (probe paths the Flask app serves, consumer groups, topic
partitions vs KEDA's maxReplicaCount, secrets referenced, never inlined)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.binaries import unavailable
from tests.support import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SCHEMAS = ROOT.parent / "shared" / "schemas" / "crds"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2"}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        unavailable("kubectl not installed (needed for `kubectl kustomize`; see docs/CONTAINERS.md)")
    return kubectl


def build(overlay: str, tmp_path: Path) -> list[dict]:
    """`kubectl kustomize` of a copy of deploy/k8s whose git-ignored env files (mongodb.env,
    the postgres overlay's postgres.env) are their examples."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    proc = subprocess.run([_kubectl(), "kustomize", str(tree / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request, tmp_path_factory):
    return request.param, build(request.param, tmp_path_factory.mktemp(request.param))


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _store(docs) -> str:
    """The store an overlay runs: STORE in the components' settings (empty: mongodb)."""
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("pipeline-settings"))
    return settings["data"].get("STORE", "mongodb")


def _consumer(docs) -> dict:
    return _by_kind(docs, "Deployment")["inference-consumer"]["spec"]["template"]["spec"]["containers"][0]


def _embedded(docs) -> bool:
    """The overlay runs the model in the inference consumer (INFERENCE_MODE=embedded): no service."""
    return {"name": "INFERENCE_MODE", "value": "embedded"} in _consumer(docs).get("env", [])


def test_overlays_exist():
    assert {"local", "cloud", "postgres"} <= set(OVERLAYS)


def test_builtin_kinds_pass_kubernetes_validate_strict(built, tmp_path):
    _, docs = built
    builtin = [d for d in docs if d["apiVersion"] in BUILTIN_GROUPS]
    assert len(builtin) >= 10
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    proc = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", "--quiet", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    unknown = [f"{d['apiVersion']} {d['kind']}" for d in docs
               if d["apiVersion"] not in BUILTIN_GROUPS and d["apiVersion"].split("/")[0]
               not in ("kafka.strimzi.io", "keda.sh")]
    assert not unknown, f"kinds validated by neither check: {unknown}"


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: 1}]\n"
                   "  noSuchField: 1\n")
    proc = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", "--quiet", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0


def _crd_schema(doc: dict) -> dict:
    group, version = doc["apiVersion"].split("/")
    path = SCHEMAS / group / f"{doc['kind'].lower()}_{version}.json"
    if not path.is_file():
        unavailable(f"CRD schema {path} not found (../shared/schemas, see its README)")
    return json.loads(path.read_text())


def test_custom_resources_match_their_crd_schemas(built):
    _, docs = built
    custom = [d for d in docs if d["apiVersion"].split("/")[0] in ("kafka.strimzi.io", "keda.sh")]
    kinds = {d["kind"] for d in custom}
    assert kinds == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ScaledObject",
                     "TriggerAuthentication"}
    for doc in custom:
        errors = sorted(jsonschema.Draft7Validator(_crd_schema(doc)).iter_errors(doc), key=str)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {[e.message for e in errors][:5]}"


def test_crd_schema_check_rejects_a_bad_resource(built):
    _, docs = built
    topic = json.loads(json.dumps(_by_kind(docs, "KafkaTopic")["iot-images"]))
    topic["spec"]["partitions"] = "six"
    assert list(jsonschema.Draft7Validator(_crd_schema(topic)).iter_errors(topic))


def test_kraft_kafka_and_topics(built):
    _, docs = built
    kafka = _by_kind(docs, "Kafka")["iot-kafka"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    pool = _by_kind(docs, "KafkaNodePool")["dual-role"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    topics = _by_kind(docs, "KafkaTopic")
    assert {"iot-images", "iot-inference", "iot-dlq"} <= set(topics)
    scaled = _by_kind(docs, "ScaledObject")["inference-consumer"]
    assert scaled["spec"]["maxReplicaCount"] <= topics["iot-images"]["spec"]["partitions"]
    trigger = scaled["spec"]["triggers"][0]
    from consumers.inference import GROUP_ID as INFERENCE_GROUP
    assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == INFERENCE_GROUP
    assert trigger["metadata"]["topic"] == "iot-images"


def test_kafka_users_acls_name_the_code_groups(built):
    _, docs = built
    from consumers.db import GROUP_ID as DB_GROUP
    from consumers.inference import GROUP_ID as INFERENCE_GROUP
    users = _by_kind(docs, "KafkaUser")
    assert set(users) == {"producer", "inference-consumer", "db-consumer"}

    def groups(user):
        return {a["resource"]["name"] for a in users[user]["spec"]["authorization"]["acls"]
                if a["resource"]["type"] == "group"}
    assert groups("inference-consumer") == {INFERENCE_GROUP}
    assert groups("db-consumer") == {DB_GROUP}
    assert groups("producer") == set()


def test_probes_use_the_paths_the_service_serves(built):
    _, docs = built
    if _embedded(docs):
        pytest.skip("no inference service in this overlay (INFERENCE_MODE=embedded)")
    served = set(re.findall(r'@health\.get\("([^"]+)"\)', (ROOT / "inference" / "api.py").read_text()))
    assert {"/healthz", "/readyz"} <= served
    container = _by_kind(docs, "Deployment")["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["path"] in served


def test_workloads_have_resources_pdbs_and_autoscaling(built):
    _, docs = built
    deployments = _by_kind(docs, "Deployment")
    service = not _embedded(docs)  # embedded: the model in the consumer, no inference service
    assert {"inference-consumer", "db-consumer"} <= set(deployments) and ("inference" in deployments) == service
    pdb_targets = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                   for p in _by_kind(docs, "PodDisruptionBudget").values()}
    for name, dep in deployments.items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
        assert "livenessProbe" in dep["spec"]["template"]["spec"]["containers"][0], name
        assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] in pdb_targets
    if service:
        hpa = _by_kind(docs, "HorizontalPodAutoscaler")["inference"]
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "inference"
    else:
        assert not _by_kind(docs, "HorizontalPodAutoscaler")
    # the store: one StatefulSet with its own volume and a headless Service, and no other
    store = {"mongodb": "mongodb", "postgres": "postgres"}[_store(docs)]
    assert set(_by_kind(docs, "StatefulSet")) == {store}
    assert _by_kind(docs, "StatefulSet")[store]["spec"]["volumeClaimTemplates"]
    assert _by_kind(docs, "Service")[store]["spec"]["clusterIP"] == "None"
    job = _by_kind(docs, "Job")["producers"]
    assert job["spec"]["completionMode"] == "Indexed" and "parallelism" in job["spec"]


def test_secrets_are_generated_and_referenced_never_inlined(built):
    _, docs = built
    # the only Secrets are the generated ones; their values come from the (ignored) env file
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    store = _store(docs)
    for path in K8S.rglob("*.yaml"):
        text = path.read_text()
        assert not [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "Secret"], \
            f"{path}: a Secret written in a manifest"
        assert not re.search(r"(?i)password\s*[:=]\s*(?!\$\()\S", text.replace("key: password", "")), path
    db = _by_kind(docs, "Deployment")["db-consumer"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in db.get("env", [])}
    if store == "mongodb":
        assert any(n.startswith("mongodb-credentials-") for n in secrets)
        assert "MONGO_INITDB_ROOT_PASSWORD" in json.dumps(docs)  # referenced by secretKeyRef
        assert "valueFrom" in env["MONGO_PASSWORD"] and "$(MONGO_PASSWORD)" in env["MONGO_URI"]["value"]
    else:
        # the server and the DB consumer read the same generated Secret (its hashed name)
        name = next(n for n in secrets if n.startswith("postgres-credentials-"))
        server = _by_kind(docs, "StatefulSet")["postgres"]["spec"]["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": name}} in server["envFrom"] and {"secretRef": {"name": name}} in db["envFrom"]
        assert not [n for n in secrets if n.startswith("mongodb-credentials")]
        assert not [k for k in env if k.startswith("MONGO")], env
    for example in K8S.rglob("*.env.example"):
        real = example.with_suffix("").relative_to(ROOT)
        ignored = subprocess.run(["git", "check-ignore", "-q", str(real)], cwd=ROOT).returncode
        assert ignored == 0, f"{real} must be git-ignored"


def test_the_postgres_overlay_points_every_component_at_postgres(built):
    """The postgres overlay: STORE=postgres and the server's address in the shared settings,
    the store in the namespace of the rest, MongoDB left out entirely."""
    overlay, docs = built
    if overlay != "postgres":
        pytest.skip("the postgres overlay only")
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert settings["STORE"] == "postgres" and settings["POSTGRES_HOST"] == "postgres-0.postgres"
    assert not [d for d in docs if "mongo" in d["metadata"]["name"]]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"iot-pipeline"}
    server = _by_kind(docs, "StatefulSet")["postgres"]["spec"]["template"]
    assert server["spec"]["securityContext"]["runAsNonRoot"] is True
    assert server["spec"]["containers"][0]["image"].startswith("postgres:")


def test_the_torch_overlay_serves_the_torch_image_with_its_engine(tmp_path):
    """MODEL_ENGINE=torch on Kubernetes: the inference-torch image (the Dockerfile's target of
    that name) with MODEL_ENGINE=torch, everything else the local overlay's."""
    docs = build("local-torch", tmp_path)
    container = _by_kind(docs, "Deployment")["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] == "iot-pipeline/inference-torch"
    assert {"name": "MODEL_ENGINE", "value": "torch"} in container["env"]
    assert container["imagePullPolicy"] == "Never"  # the local overlay's
    consumer = _by_kind(docs, "Deployment")["inference-consumer"]["spec"]["template"]["spec"]["containers"][0]
    assert consumer["image"].split(":")[0] == "iot-pipeline/app"


def test_the_embedded_overlay_runs_the_model_in_the_consumer(tmp_path):
    """INFERENCE_MODE=embedded on Kubernetes (overlay local-torch-embedded): the inference
    consumer runs from the inference-torch image (the Dockerfile's target, which holds the
    consumers' code) with INFERENCE_MODE=embedded, MODEL_ENGINE=torch and the model's memory;
    no inference service at all (Deployment, Service, PDB, HPA, its URL); the rest is the
    local overlay's, the consumer still scaled by KEDA and logged in to Kafka as itself."""
    docs = build("local-torch-embedded", tmp_path)
    assert _embedded(docs)
    consumer = _consumer(docs)
    assert consumer["image"] == "iot-pipeline/inference-torch:latest" and consumer["imagePullPolicy"] == "Never"
    assert consumer["command"] == ["python", "-m", "consumers.inference"]
    env = {e["name"]: e for e in consumer["env"]}
    assert env["MODEL_ENGINE"]["value"] == "torch" and env["MODEL_WEIGHTS"]["value"] == "auto"
    assert env["KAFKA_SASL_USERNAME"]["value"] == "inference-consumer"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "inference-consumer"
    assert consumer["resources"]["requests"]["memory"] == "800Mi"  # the torch service's
    assert not [d for d in docs if d["metadata"]["name"] == "inference"], "an inference service is left"
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert "INFERENCE_URL" not in settings and settings["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert "inference-consumer" in _by_kind(docs, "ScaledObject")
    local = {(d["kind"], d["metadata"]["name"]) for d in build("local", tmp_path / "local")}
    mine = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert local - mine == {("Deployment", "inference"), ("Service", "inference"),
                            ("PodDisruptionBudget", "inference"), ("HorizontalPodAutoscaler", "inference"),
                            *((k, n) for k, n in local if n.startswith(("inference-token-", "pipeline-settings-")))}


def test_the_inference_api_wants_its_token_and_the_consumer_sends_it(built):
    """The VMs' secure default where the images allow: the inference service and its
    consumer read INFERENCE_TOKEN from the generated inference-token Secret."""
    _, docs = built
    if _embedded(docs):  # no service, so no token: neither its Secret nor a reference to it
        assert not [d for d in docs if d["metadata"]["name"].startswith("inference-token")]
        assert "INFERENCE_TOKEN" not in {e["name"] for e in _consumer(docs)["env"]}
        return
    assert any(d["metadata"]["name"].startswith("inference-token-") for d in docs if d["kind"] == "Secret")
    deployments = _by_kind(docs, "Deployment")
    for name in ("inference", "inference-consumer"):
        env = {e["name"]: e for e in deployments[name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        ref = env["INFERENCE_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("inference-token-") and ref["key"] == "INFERENCE_TOKEN", (name, ref)
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/base/inference.env"], cwd=ROOT).returncode
    assert ignored == 0, "deploy/k8s/base/inference.env must be git-ignored"


def test_kafka_clients_use_scram_over_tls_with_the_cluster_ca(built):
    """As on the VMs: the only listener is SCRAM-SHA-512 over TLS; every Kafka client (the
    two consumers, the producers, KEDA) trusts Strimzi's cluster CA and logs in."""
    _, docs = built
    listeners = _by_kind(docs, "Kafka")["iot-kafka"]["spec"]["kafka"]["listeners"]
    assert [(x["tls"], x["authentication"]["type"]) for x in listeners] == [(True, "scram-sha-512")]
    settings = next(d for d in docs if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"].startswith("pipeline-settings"))["data"]
    assert settings["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["KAFKA_BOOTSTRAP_SERVERS"].endswith(f":{listeners[0]['port']}")
    ca_dir = settings["KAFKA_SSL_CAFILE"].rsplit("/", 1)[0]
    pods = {**{n: d["spec"]["template"]["spec"] for n, d in _by_kind(docs, "Deployment").items()
               if n != "inference"},
            "producers": _by_kind(docs, "Job")["producers"]["spec"]["template"]["spec"]}
    assert set(pods) == {"inference-consumer", "db-consumer", "producers"}
    for name, pod in pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[ca_dir]["readOnly"] is True, name
        assert volumes[mounts[ca_dir]["name"]]["secret"]["secretName"] == "iot-kafka-cluster-ca-cert", name
    auth = _by_kind(docs, "TriggerAuthentication")["inference-consumer-kafka"]["spec"]["secretTargetRef"]
    params = {r["parameter"]: r for r in auth}
    assert params["ca"]["name"] == "iot-kafka-cluster-ca-cert" and params["ca"]["key"] == "ca.crt"
    sasl = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == params["tls"]["name"])
    assert base64.b64decode(sasl["data"][params["tls"]["key"]]) == b"enable"
    trigger = _by_kind(docs, "ScaledObject")["inference-consumer"]["spec"]["triggers"][0]["metadata"]
    assert trigger["bootstrapServers"].endswith(f".svc:{listeners[0]['port']}")
