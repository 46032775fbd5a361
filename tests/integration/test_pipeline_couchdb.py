"""End to end with STORE=couchdb through the real local stack: broker, the stack's own
pouchdb-server (CouchDB's HTTP API, on disk), Gunicorn, both consumers and a producer.
What is stored is read over CouchDB's HTTP API (tests/couch.py), not through common.store;
the one-liner docs/USAGE.md gives to list the latest images is run as it is written."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from analysis.summary import close_run
from common.labels import CIFAR10_CLASSES
from common.store.opening import reader_of
from stack.component import pid_alive
from tests import couch
from tests.support import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run_producer(env, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer", "--out", str(out), "--no-progress",
                           "--result-timeout", str(HANG_GUARD_S), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=2 * HANG_GUARD_S)


def auth(env) -> tuple[str, str]:
    return env["COUCHDB_USER"], env["COUCHDB_PASSWORD"]


def stored_docs(env, producer_id: str, want: int) -> dict[str, dict]:
    """The producer's documents once ``want`` of them have their prediction (or the hang guard)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        docs = {k: d for k, d in couch.documents(env["COUCHDB_URL"], auth(env)).items()
                if d.get("producer_id") == producer_id}
        if sum("prediction" in d for d in docs.values()) >= want or time.monotonic() > deadline:
            return docs
        time.sleep(0.5)


def usage_one_liner() -> str:
    """The curl one-liner of docs/USAGE.md that lists the latest stored images."""
    lines = (ROOT / "docs" / "USAGE.md").read_text().splitlines()
    (line,) = [x for x in lines if x.startswith("curl ") and "/img_db/_all_docs" in x]
    return line


def test_every_image_is_classified_and_stored_once_in_couchdb(couch_stack, tmp_path):
    env = couch_stack["env"]
    assert env["STORE"] == "couchdb" and "MONGO_URI" not in env
    assert (couch_stack["dir"] / "pids" / "couchdb.pid").exists()
    assert not (couch_stack["dir"] / "pids" / "mongo.pid").exists()
    # The databases are the pipeline's only: no answer without the password.
    assert requests.get(f"{env['COUCHDB_URL']}/img_db/_all_docs", timeout=10).status_code == 401
    proc = run_producer(env, tmp_path, "--count", "60", "--rate", "60", "--devices", "3", "--producer-id",
                        "couch-flow")
    assert proc.returncode == 0, proc.stderr[-3000:]

    docs = stored_docs(env, "couch-flow", 60)
    sent = [line.split(",")[0] for line in (tmp_path / "latencies.csv").read_text().splitlines()[1:]]
    assert len(sent) == 60 and set(docs) == set(sent)  # _id = image id: one document per image
    with requests.Session() as s:  # no document has a conflicting revision beside it
        s.auth = auth(env)
        rows = s.post(f"{env['COUCHDB_URL']}/img_db/_all_docs", params={"include_docs": "true", "conflicts": "true"},
                      json={"keys": sent}, timeout=60).json()["rows"]
    assert [r["doc"].get("_conflicts") for r in rows] == [None] * 60
    from PIL import Image

    assert {d["device_id"] for d in docs.values()} == {f"couch-flow-cam{i:02d}" for i in range(3)}
    for d in docs.values():
        assert d["prediction"] in CIFAR10_CLASSES and 0 <= d["confidence"] <= 1 and d["format"] == "png"
        assert d["_attachments"]["image"]["content_type"] == "image/png"
        assert Image.open(io.BytesIO(d["image"])).size == (32, 32)
        assert d["stored_at"] >= d["sent_at"] and d["prediction_stored_at"] >= d["sent_at"]
        assert d["received_at"] <= d["inferred_at"] <= d["published_at"]

    listed = subprocess.run(["bash", "-c", usage_one_liner()], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    latest = [line.split()[0] for line in listed.stdout.splitlines()]
    assert len(latest) == 10 and set(latest) <= set(docs), listed.stdout

    # The run closed against the store through the reader, as make demo and the experiments do.
    store = reader_of(env)
    try:
        summary = close_run(tmp_path, store, timeout_s=HANG_GUARD_S)
    finally:
        store.close()
    assert summary["sent"] == summary["results"] == summary["stored_with_prediction"] == 60
    assert summary["lost"] == 0 and summary["duplicate_documents"] == 0


def test_the_data_outlives_a_restart_of_the_stack(couch_stack):
    """pouchdb-server keeps its databases in the stack's directory: stopped and started again
    (`make down`, `make up`), the stack serves the same documents with the same password."""
    stack, env = couch_stack["stack"], couch_stack["env"]
    before = couch.documents(env["COUCHDB_URL"], auth(env))
    assert before, "the stack holds no document to keep"
    password, pids = env["COUCHDB_PASSWORD"], stack.processes()
    stack.stop()
    assert not [p for p in pids if pid_alive(p)], "processes left after 'stack down'"
    stack.start()
    assert stack.env["COUCHDB_PASSWORD"] == password
    assert set(couch.documents(stack.env["COUCHDB_URL"], auth(stack.env))) == set(before)
