"""The broker's fault scenarios (the stack's broker on s3rver, STACK_BROKER_STORAGE=s3):

``broker-restart``                 SIGKILL mid-stream; the supervisor restarts it on its data
``broker-down-30s``                stopped for 30 s, then started again: the producer keeps the
                                   images the broker did not acknowledge and sends them when it is back
``broker-down-30s-small-buffer``   the same with a producer buffer far smaller than 30 s of images:
                                   what does not fit is counted as failed by the producer
                                   (KAFKA_PRODUCER_BUFFER_BYTES, producer/sending.py), never
                                   dropped unseen; the check is stored == acknowledged and
                                   failed == attempted - acknowledged (:func:`check_failed_counted`)
``broker-restart-rebalance``       a second inference consumer joins the group and the broker is
                                   SIGKILLed while the group rebalances, then the consumer works and leaves

On a memory-only broker (STACK_BROKER_STORAGE=memory) each of them fails: its death stops
the whole stack, and a restarted memory broker would have lost the topics and offsets.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.faults.scenarios import PY, ROOT, Fault, Stack, kill_component, say, wait_for
from tests.support import HANG_GUARD_S

DOWN_S = 30
# ~24 CIFAR images (about 2.7 kB each as PNG): full within a second of the broker going away
# at 40 images/s; an image then waits KAFKA_MAX_BLOCK_MS for room and counts as failed.
SMALL_BUFFER = {"KAFKA_PRODUCER_BUFFER_BYTES": "65536", "KAFKA_MAX_BLOCK_MS": "500"}


def broker_down(stack: Stack, note: dict) -> tuple[float, float]:
    t0 = stack.send("kafka", signal.SIGTERM, keep_down=True)  # = python -m stack pause kafka
    time.sleep(DOWN_S)
    t1 = time.time()
    old = stack.pid("kafka")
    stack.stack("resume", "kafka")
    wait_for(lambda: stack.restarted("kafka", old), HANG_GUARD_S, "broker started again")
    note["started_after_resume_s"] = round(time.time() - t1, 2)
    return t0, t1


def broker_restart_rebalance(stack: Stack, note: dict) -> tuple[float, float]:
    """A second inference consumer joins the group; the broker is SIGKILLed half a second
    after the consumer starts polling (its JoinGroup sent, the group rebalancing: the
    member already there only learns it at its next heartbeat) and before it owns partitions."""
    marker = stack.dir / "state" / f"extra-consumer-{uuid.uuid4().hex[:6]}.joined"
    log_path = stack.dir / "logs" / "extra-inference-consumer.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    log = open(log_path, "ab")
    proc = subprocess.Popen([PY, "-m", "consumers.inference"], cwd=ROOT,
                            env={**stack.env, "READY_FILE": str(marker)},
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()

    def polling() -> bool:  # consumers/inference.py says so right before its first poll
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            return b"consuming " in fh.read() or proc.poll() is not None

    try:
        wait_for(polling, HANG_GUARD_S, "second consumer polling", step=0.05)
        time.sleep(0.5)
        note["rebalancing_at_kill"] = not marker.exists() and proc.poll() is None
        old = stack.pid("kafka")
        t = stack.send("kafka", signal.SIGKILL)
        wait_for(lambda: stack.restarted("kafka", old), HANG_GUARD_S, "broker restarted")
        note["restarted_after_s"] = round(time.time() - t, 2)
        note["joined_after_kill_s"] = round(wait_for(lambda: marker.exists() or proc.poll() is not None,
                                                     HANG_GUARD_S, "second consumer joined"), 2)
        if not marker.exists():
            raise RuntimeError(f"the second consumer exited with {proc.returncode} before it joined "
                               f"(logs/extra-inference-consumer.log)")
        time.sleep(5)  # it owns partitions and works for a while
    finally:
        proc.send_signal(signal.SIGTERM)  # finish the batch, commit, leave the group
        proc.wait(60)
    note["extra_consumer_exit"] = proc.returncode
    return t, t


BROKER_FAULTS = {f.name: f for f in [
    Fault("broker-restart", "SIGKILL the broker mid-stream; the supervisor restarts it on its data (s3rver)",
          "results", kill_component("kafka")),
    Fault("broker-down-30s", f"stop the broker for {DOWN_S} s, then start it; the producer holds its "
          f"unacknowledged images meanwhile", "results", broker_down),
    Fault("broker-down-30s-small-buffer", f"stop the broker for {DOWN_S} s with a {SMALL_BUFFER['KAFKA_PRODUCER_BUFFER_BYTES']}-"
          f"byte producer buffer: what does not fit is counted failed", "results", broker_down,
          producer_env=SMALL_BUFFER, expect_failed=True),
    Fault("broker-restart-rebalance", "SIGKILL the broker while a second inference consumer joins the group "
          "(rebalance: 0.5 s after it starts polling), then the consumer works and leaves", "results",
          broker_restart_rebalance),
]}
BROKER_SCENARIOS = list(BROKER_FAULTS)


def producer_counts(run_dir: Path, producer_id: str) -> dict:
    return json.loads((run_dir / "producers" / producer_id / "producer.json").read_text())


def check_failed_counted(row: dict, counts: dict, stored_ids: set[str], sent_ids: set[str],
                         exact: bool = True) -> dict:
    """A run where the producer counted some images as failed: it says so for exactly the
    images the broker never acknowledged, and every acknowledged one is stored once with its
    result.  ``exact`` (the small buffer: the failed images never reached the broker): the
    path ran (at least one failed) and the store holds the acknowledged ones and nothing
    else.  Without it (the broker's storage refused writes: tansu may have written a batch
    after the client gave up) a failed image that was stored all the same is counted, allowed."""
    failed_ids = set(counts["failed_images"])
    acked_ids = sent_ids - failed_ids
    facts = {"attempted": counts["attempted"], "acknowledged": counts["acknowledged"], "failed": counts["failed"],
             "stored": len(stored_ids), "failed_but_stored": len(stored_ids & failed_ids)}
    stored_ok = (counts["failed"] >= 1 and stored_ids == acked_ids and row["results"] == counts["acknowledged"]
                 and row["lost"] == counts["failed"]  # summary.json: attempted, not stored
                 ) if exact else acked_ids <= stored_ids <= sent_ids
    facts["ok"] = (stored_ok
                   and counts["attempted"] == len(sent_ids) == row["images"]
                   and counts["failed"] == counts["attempted"] - counts["acknowledged"] == len(failed_ids)
                   and row["duplicate_documents"] == 0 and row["duplicated_documents_checked"] == 0
                   and row["half_written_documents"] == 0 and row["producer_exit_codes"] == [1])
    if not facts["ok"]:
        facts["stored_not_acknowledged"] = sorted(stored_ids - acked_ids)[:5]
        facts["acknowledged_not_stored"] = sorted(acked_ids - stored_ids)[:5]
        facts["stored_not_sent"] = sorted(stored_ids - sent_ids)[:5]
    say(f"with failures: attempted {facts['attempted']}, acknowledged {facts['acknowledged']}, failed "
        f"{facts['failed']} ({facts['failed_but_stored']} of them stored all the same), stored {facts['stored']}")
    return facts
