"""make test-containers: the images built from the Dockerfile on a debootstrap base, the
pipeline's own services started from compose.yaml (Kafka and MongoDB replaced by the
embedded servers: tests/containers/compose.test.yaml), 200 CIFAR images sent through the
producer service scaled to two containers (100 each), and every one found in MongoDB exactly
once with its prediction; then the same with STORE=postgres (compose.yaml's profile
postgres), the store a real PostgreSQL (Debian's package in an image built on the same base,
tests/containers/postgres.Dockerfile) reached with a password, every image in
iot_image_data exactly once with its prediction.
Everything it created (containers, volumes, networks, images) is removed after.

Needs root and a Docker engine (started like the rehearsal's if absent).  Where none can
be started it is skipped with the reason, except under CI=true where that is a failure.
Hang guards only (HANG_GUARD_S); nothing is timed.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from pymongo import MongoClient

from tests.containers import images
from tests.rehearsal import docker
from tests.binaries import unavailable
from tests.support import HANG_GUARD_S, ROOT, eventually
from stack.ports import free_port as _free_port

pytestmark = pytest.mark.containers
log = logging.getLogger("containers.test")

COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"
OVERRIDE = Path(__file__).resolve().parent / "compose.test.yaml"
SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-python-sample.tar.gz"
PRODUCERS = 2
COUNT = 100  # per producer
SERVICES = ["kafka", "mongo", "kafka-init", "inference", "inference-consumer", "db-consumer",
            "dataset-cache-init"]


@pytest.fixture(scope="module")
def built(engine):
    if not Path(COMPOSE).exists():
        unavailable("docker-compose not found: run scripts/install-system-packages.sh")
    names = {**images.build_images(tag="test"), "postgres": images.build_postgres_image(tag="test")}
    yield names
    images.remove_images(tag="test")


@pytest.fixture()
def pipeline(built, tmp_path):
    sample = SAMPLE if SAMPLE.is_file() else None
    if sample is None:
        from tests.support import make_cifar_archive
        sample = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the producer runs as uid 10001
    project = f"iotc-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ,
               IOTC_APP_IMAGE=built["app"], IOTC_INFERENCE_IMAGE=built["inference"],
               IOTC_EMBEDDED_IMAGE=built["embedded"], IOTC_POSTGRES_IMAGE=built["postgres"],
               IOTC_KAFKA_PORT=str(_free_port()), IOTC_MONGO_PORT=str(_free_port()),
               IOTC_POSTGRES_PORT=str(_free_port()), POSTGRES_PASSWORD=uuid.uuid4().hex,
               IOTC_INFERENCE_PORT=str(_free_port()), IOTC_PRODUCER_ID=f"{project}-producer",
               IOTC_COUNT=str(COUNT), IOTC_DATASET_DIR=str(sample.parent), IOTC_DATASET_NAME=sample.name,
               IOTC_OUT_DIR=str(out),
               # compose.yaml requires them (the real MongoDB's root user); nx-27017 ignores them
               MONGO_ROOT_USERNAME="iot", MONGO_ROOT_PASSWORD=uuid.uuid4().hex,
               # the inference API's bearer token, required by compose.yaml: the consumer sends it
               INFERENCE_TOKEN=uuid.uuid4().hex)
    env.pop("DOCKER_HOST", None)

    def compose(*args: str, timeout: float = HANG_GUARD_S, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [COMPOSE, "-p", project, "-f", str(ROOT / "compose.yaml"), "-f", str(OVERRIDE),
               "--project-directory", str(ROOT), *args]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    try:
        yield {"compose": compose, "env": env, "out": out, "project": project}
    finally:
        logs = compose("logs", "--no-color", "--tail", "60", check=False, timeout=120)
        log.info("compose logs:\n%s", logs.stdout[-8000:])
        compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=300)
        left = docker.docker("ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                             "--format", "{{.Names}}", check=False).stdout.split()
        assert not left, f"containers left after compose down: {left}"


def test_images_run_unprivileged_without_tensorflow_in_app(built):
    """The images' user is uid 10001 with a writable ~/.keras (dataset and weights cache);
    TensorFlow is in the inference image only."""
    probe = ("import importlib.util, os, pathlib; "
             "print(os.getuid(), os.access(pathlib.Path.home() / '.keras' / 'datasets', os.W_OK), "
             "importlib.util.find_spec('tensorflow') is not None)")
    seen = {}
    for target in ("app", "inference"):
        out = docker.docker("run", "--rm", "--network", "none", "--entrypoint", "python", built[target],
                            "-c", probe, timeout=300).stdout.split()
        seen[target] = out
    assert seen["app"] == ["10001", "True", "False"], seen
    assert seen["inference"] == ["10001", "True", "True"], seen


def send_through_the_pipeline(pipeline, *extra_services: str) -> tuple[list[dict], set[str]]:
    """The pipeline up (and extra_services), two producer containers of COUNT images each,
    run to the end: every producer's rows (latencies.csv) and the producer ids."""
    compose = pipeline["compose"]
    # up --wait does not exist in docker-compose 1.29: depends_on conditions order the start
    # (kafka, mongo healthy -> kafka-init done; inference healthy = /readyz), and the
    # consumers' own `up` returns once they are started.
    compose("up", "-d", *extra_services, *SERVICES[3:])
    ps = compose("ps").stdout
    assert "inference-consumer" in ps and "db-consumer" in ps, ps

    # docker compose up --scale producer=N, as a user scales the cameras (--no-deps: the
    # dataset-cache volume was filled by dataset-cache-init, created above)
    compose("up", "-d", "--no-deps", "--scale", f"producer={PRODUCERS}", "producer")
    ids = compose("ps", "-q", "producer").stdout.split()
    assert len(ids) == PRODUCERS, ids

    def states():
        out = docker.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", *ids).stdout.split("\n")
        return [line.split() for line in out if line.strip()]

    done = eventually(lambda: all(st == "exited" for st, _ in states()), step_s=2)
    final = states()
    assert done, f"producers still running after the hang guard: {final}"
    assert all(code == "0" for _, code in final), \
        f"producer exit codes {final}:\n{compose('logs', '--no-color', '--tail', '40', 'producer').stdout[-4000:]}"

    files = sorted(pipeline["out"].glob("*/latencies.csv"))
    assert len(files) == PRODUCERS, files
    rows = []
    for path in files:
        with open(path) as f:
            mine = list(csv.DictReader(f))
        assert len(mine) == COUNT, f"{path}: {len(mine)} rows, expected {COUNT}"
        rows += mine
    producer_ids = {r["producer_id"] for r in rows}
    assert len(producer_ids) == PRODUCERS, producer_ids
    assert all(r["prediction"] for r in rows), "a result came back without a prediction"
    return rows, producer_ids


def test_compose_pipeline_stores_every_image_once(pipeline):
    env = pipeline["env"]
    rows, producer_ids = send_through_the_pipeline(pipeline)
    total = COUNT * PRODUCERS

    client = MongoClient(f"mongodb://127.0.0.1:{env['IOTC_MONGO_PORT']}", serverSelectionTimeoutMS=10_000)
    try:
        col = client["iot"]["images"]
        query = {"producer_id": {"$in": sorted(producer_ids)}}
        fields = {"_id": 1, "prediction": 1, "seq": 1, "producer_id": 1}

        def stored():
            docs = list(col.find(query, fields))
            return docs if len(docs) >= total and all(d.get("prediction") for d in docs) else None

        docs = eventually(stored) or list(col.find(query, fields))
        ids = [d["_id"] for d in docs]
        assert len(ids) == total, f"{len(ids)} documents for the producers, expected {total}"
        assert len(set(ids)) == total, "an image was stored twice"
        per_producer = {p: {d.get("seq") for d in docs if d["producer_id"] == p} for p in producer_ids}
        assert all(len(seqs) == COUNT for seqs in per_producer.values()), \
            {p: len(s) for p, s in per_producer.items()}
        missing = [d["_id"] for d in docs if not d.get("prediction")]
        assert not missing, f"{len(missing)} images stored without a prediction: {missing[:5]}"
        assert {r["image_id"] for r in rows} == set(ids), "the stored images are not the images sent"
    finally:
        client.close()


def test_compose_pipeline_stores_every_image_once_in_postgres(pipeline):
    """STORE=postgres with the profile postgres: the DB consumer writes to a real PostgreSQL
    with a password (scram-sha-256), and every image sent is in iot_image_data once with
    its prediction and its bytes."""
    env = pipeline["env"]
    env.update(STORE="postgres", COMPOSE_PROFILES="postgres")
    rows, producer_ids = send_through_the_pipeline(pipeline, "postgres")
    total = COUNT * PRODUCERS
    dsn = (f"host=127.0.0.1 port={env['IOTC_POSTGRES_PORT']} dbname=iot user=iot "
           f"password={env['POSTGRES_PASSWORD']} connect_timeout=10")
    query = ("SELECT image_id, producer_id, seq, prediction, octet_length(image) FROM iot_image_data "
             "WHERE producer_id = ANY(%s)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        def stored():
            found = conn.execute(query, (sorted(producer_ids),)).fetchall()
            return found if len(found) >= total and all(r[3] for r in found) else None

        found = eventually(stored) or conn.execute(query, (sorted(producer_ids),)).fetchall()
        # and nobody gets in without the password
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(dsn.replace(env["POSTGRES_PASSWORD"], "wrong"), connect_timeout=10).close()
    ids = [r[0] for r in found]
    assert len(ids) == total, f"{len(ids)} rows for the producers, expected {total}"
    assert len(set(ids)) == total
    per_producer = {p: {r[2] for r in found if r[1] == p} for p in producer_ids}
    assert all(len(seqs) == COUNT for seqs in per_producer.values()), {p: len(s) for p, s in per_producer.items()}
    assert not [r[0] for r in found if not r[3] or not r[4]], "an image stored without its prediction or bytes"
    assert {r["image_id"] for r in rows} == set(ids), "the stored images are not the images sent"
    # MongoDB (the default store, still started) got nothing: the consumer wrote to PostgreSQL only
    client = MongoClient(f"mongodb://127.0.0.1:{env['IOTC_MONGO_PORT']}", serverSelectionTimeoutMS=10_000)
    try:
        assert client["iot"]["images"].count_documents({"producer_id": {"$in": sorted(producer_ids)}}) == 0
    finally:
        client.close()
