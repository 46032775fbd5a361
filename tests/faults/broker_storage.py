"""The faults of the broker's storage (the stack's broker on s3rver, STACK_BROKER_STORAGE=s3):

``broker-storage-restart``  SIGKILL s3rver mid-stream; the supervisor restarts it on its data.
                            tansu's reads and writes fail meanwhile and are retried.
``broker-disk-full``        the directory s3rver writes to (a tmpfs of its own, which
                            tests/faults/test_faults_broker_storage.py mounts before the stack
                            starts) filled to the last byte for FULL_S seconds, then the filler
                            deleted.  Intake must stop with an ERROR line naming the full disk
                            (s3rver/serve.js).  An image the producer could not get acknowledged
                            in time counts as failed in its producer.json, never as sent.  Once
                            there is room again, every acknowledged image is stored exactly once.

Same checks as the other broker scenarios (tests/faults/broker.py).  When the producer
counted failures in ``broker-disk-full``, tests/faults/broker.py's ``check_failed_counted`` (not exact) judges the run: every
acknowledged image stored once with its prediction, failed = attempted - acknowledged, and
nothing stored that was never sent.  Not in ``make test-faults`` (CI's time budget):
``make test-faults-broker-storage``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.faults.scenarios import Fault, kill_component, say, wait_for
from tests.support import HANG_GUARD_S, fill_disk

FULL_S = 30  # how long the disk stays full, from the moment it is filled
SETTLE_S = 2  # after the first refusal: produce requests already past their writes are answered


def broker_data(stack) -> Path:
    """Where s3rver keeps the broker's objects (stack/broker.py BrokerStorage)."""
    return stack.dir / "data" / "broker"


def _producer_progress(stack, scenario: str) -> dict:
    """The scenario's producer's progress.json (``sent``: acknowledged by the broker).
    FaultSuite's layout (tests/faults/run.py): the stack in <out>/stack, the scenario's run in
    <out>/<scenario>, one producer."""
    for path in (stack.dir.parent / scenario / "producers").glob("*/progress.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # being replaced: read again
    return {}


def _new_lines(path: Path, offset: int) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace").splitlines()


def broker_disk_full(stack, note: dict) -> tuple[float, float]:
    data = broker_data(stack)
    if not os.path.ismount(data):
        raise RuntimeError(f"{data} is not a mount point: broker-disk-full fills a tmpfs of its own "
                           f"(make test-faults-broker-storage, as root), never a shared disk")
    log_path = stack.dir / "logs" / "s3rver.log"
    offset = log_path.stat().st_size
    t0 = time.time()
    filler = fill_disk(data)
    note["filler_mb"] = round(filler.stat().st_size / 1e6, 1)

    def refused() -> str | None:
        return next((x for x in _new_lines(log_path, offset) if "ERROR" in x and "disk full" in x), None)

    note["error_after_s"] = round(wait_for(refused, HANG_GUARD_S, "s3rver logging the full disk"), 2)
    note["error_line"] = refused()[:400]
    time.sleep(SETTLE_S)
    before = _producer_progress(stack, "broker-disk-full")
    time.sleep(max(5.0, t0 + FULL_S - time.time()))
    after = _producer_progress(stack, "broker-disk-full")
    # Intake stopped: nothing acknowledged from SETTLE_S after the first refusal until the
    # space is freed, while the producer went on sending (its buffer holds them).
    note["acknowledged_while_full"] = after.get("sent", 0) - before.get("sent", 0)
    note["attempted_while_full"] = after.get("attempted", 0) - before.get("attempted", 0)
    note["failed_while_full"] = after.get("failed", 0) - before.get("failed", 0)
    t1 = time.time()
    filler.unlink()
    note["full_s"] = round(t1 - t0, 2)

    def room_again() -> str | None:
        return next((x for x in _new_lines(log_path, offset) if "has room again" in x), None)

    note["writes_accepted_after_s"] = round(wait_for(room_again, HANG_GUARD_S, "s3rver accepting writes again"), 2)
    note["room_again_line"] = room_again()[:400]
    say(f"broker-disk-full: {note['acknowledged_while_full']} acknowledged, {note['attempted_while_full']} sent "
        f"while full; {note['error_line']}")
    return t0, t1


BROKER_STORAGE_FAULTS = {f.name: f for f in [
    # may_fail: a produce request whose write was cut by the kill can be answered
    # UNKNOWN_SERVER_ERROR by tansu, which kafka-python does not retry (seen once in one run).
    Fault("broker-storage-restart", "SIGKILL s3rver (the broker's storage) mid-stream; the supervisor "
          "restarts it on its data", "results", kill_component("s3rver"), may_fail=True),
    Fault("broker-disk-full", f"the broker's storage disk (a tmpfs) filled to the last byte for {FULL_S} s, "
          f"then freed", "results", broker_disk_full, may_fail=True),
]}
BROKER_STORAGE_SCENARIOS = list(BROKER_STORAGE_FAULTS)
