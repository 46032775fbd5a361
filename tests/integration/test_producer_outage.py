"""The producer when the broker is away: it retries until the delivery timeout, then
counts the images as failed and still writes its run files: a KafkaTimeoutError must not
end it before they are written, or its images would be missing from "lost"."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from common.rundir import read_latencies
from tests.support import HANG_GUARD_S, ROOT


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_broker_away_images_counted_as_failed_and_run_files_written(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}",
           "KAFKA_DELIVERY_TIMEOUT_S": "2", "DATASET": "synthetic"}
    proc = subprocess.run([sys.executable, "-m", "producer", "--count", "5", "--rate", "50", "--no-progress",
                           "--out", str(tmp_path), "--progress-file", str(tmp_path / "progress.json"),
                           "--result-timeout", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = read_latencies(tmp_path / "latencies.csv")
    assert len(rows) == 5 and all(r.result_at is None for r in rows)  # on record, as lost
    counts = json.loads((tmp_path / "producer.json").read_text())
    assert counts["attempted"] == 5 and counts["acknowledged"] == 0 and counts["failed"] == 5
    assert set(counts["failed_images"]) == {r.image_id for r in rows}
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["sent"] == 0 and progress["attempted"] == 5 and progress["done"]
