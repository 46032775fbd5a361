"""End to end with STORE=postgres through the real local stack: broker, the stack's own
PostgreSQL cluster, Gunicorn, both consumers and a producer.  What is stored is read with
SQL (psycopg), not through common.store."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.summary import close_run
from common.labels import CIFAR10_CLASSES
from common.settings import PostgresSettings
from common.store import open_reader
from stack.component import pid_alive
from tests import pg
from tests.support import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run_producer(env, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer", "--out", str(out), "--no-progress",
                           "--result-timeout", str(HANG_GUARD_S), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=2 * HANG_GUARD_S)


def stored_rows(dsn: str, producer_id: str, want: int) -> dict[str, dict]:
    """The producer's rows once ``want`` of them have their prediction (or the hang guard)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        rows = pg.rows(dsn, "producer_id = %s", (producer_id,))
        if sum(r["prediction"] is not None for r in rows.values()) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_every_image_is_classified_and_stored_once_in_postgres(postgres_stack, tmp_path):
    env = postgres_stack["env"]
    assert env["STORE"] == "postgres" and "MONGO_URI" not in env
    assert (postgres_stack["dir"] / "pids" / "postgres.pid").exists()
    assert not (postgres_stack["dir"] / "pids" / "mongo.pid").exists()
    proc = run_producer(env, tmp_path, "--count", "60", "--rate", "60", "--devices", "3", "--producer-id", "pg-flow")
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = stored_rows(env["POSTGRES_DSN"], "pg-flow", 60)
    sent = [line.split(",")[0] for line in (tmp_path / "latencies.csv").read_text().splitlines()[1:]]
    assert len(sent) == 60 and set(rows) == set(sent)  # the primary key: one row per image
    with pg.connect(env["POSTGRES_DSN"]) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT image_id) FROM iot_image_data "
                            "WHERE producer_id = 'pg-flow'").fetchone() == (60, 60)
    from PIL import Image

    assert {r["device_id"] for r in rows.values()} == {f"pg-flow-cam{i:02d}" for i in range(3)}
    for r in rows.values():
        assert r["prediction"] in CIFAR10_CLASSES and 0 <= r["confidence"] <= 1 and r["format"] == "png"
        assert Image.open(io.BytesIO(r["image"])).size == (32, 32)
        assert r["stored_at"] >= r["sent_at"] and r["prediction_stored_at"] >= r["sent_at"]
        assert r["received_at"] <= r["inferred_at"] <= r["published_at"]

    # The run closed against the store through the reader, as make demo and the experiments do.
    store = open_reader(store="postgres", postgres=PostgresSettings(postgres_dsn=env["POSTGRES_DSN"]))
    try:
        summary = close_run(tmp_path, store, timeout_s=HANG_GUARD_S)
    finally:
        store.close()
    assert summary["sent"] == summary["results"] == summary["stored_with_prediction"] == 60
    assert summary["lost"] == 0 and summary["duplicate_documents"] == 0


def test_the_data_outlives_a_restart_of_the_stack(postgres_stack):
    """The cluster is kept in the stack's directory: stopped and started again (`make down`,
    `make up`), the stack serves the same rows with the same password."""
    stack, env = postgres_stack["stack"], postgres_stack["env"]
    before = pg.rows(env["POSTGRES_DSN"])
    assert before, "the stack holds no row to keep"
    dsn, pids = env["POSTGRES_DSN"], stack.processes()
    stack.stop()
    assert not [p for p in pids if pid_alive(p)], "processes left after 'stack down'"
    stack.start()
    assert stack.env["POSTGRES_DSN"].split("@")[0] == dsn.split("@")[0]  # same user and password
    assert set(pg.rows(stack.env["POSTGRES_DSN"])) == set(before)
