"""The broker's storage faults (tests/faults/broker_storage.py) on a stack of their own, its
broker on s3rver (STACK_BROKER_STORAGE=s3) whose directory is a tmpfs of its own (mounted
here before the stack starts; root only: without it broker-disk-full is skipped):
s3rver SIGKILLed mid-stream and restarted by the supervisor, and its disk filled to the
last byte for 30 s, then freed.  Same checks as tests/faults/test_faults_broker.py.  The
table and faults.json go to results/faults/<timestamp>-broker-storage/ (latest-broker-storage).

Not part of make test-faults (CI's 60-minute budget; these two cost a stack start and about
two scenarios of 1,000 images): ``make test-faults-broker-storage``
(= ``pytest -m broker_storage tests/faults``), one of them with ``-k``.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.faults.broker_storage import BROKER_STORAGE_SCENARIOS
from tests.faults.test_faults import check, run_suite, suite_dir

pytestmark = pytest.mark.broker_storage
TMPFS_SIZE = "256m"  # about 3 files of at least a page per record batch: ~30 MB per scenario


@pytest.fixture(scope="module")
def storage_suite():
    out = suite_dir("-broker-storage")
    data = out / "stack" / "data" / "broker"
    data.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(data)],
                             capture_output=True, text=True)
    try:
        for suite in run_suite("mongodb", latest_name="latest-broker-storage", out=out,
                               stack_env={"STACK_BROKER_STORAGE": "s3"}):
            suite.tmpfs = mounted.returncode == 0
            suite.tmpfs_error = mounted.stderr.strip()
            yield suite
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(data)], capture_output=True)


def details(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "e2e_ms"}, indent=1, default=str)[-6000:]


@pytest.mark.parametrize("scenario", BROKER_STORAGE_SCENARIOS)
def test_broker_storage_fault_loses_nothing_acknowledged(storage_suite, scenario):
    if scenario == "broker-disk-full" and not storage_suite.tmpfs:
        pytest.skip(f"cannot mount a tmpfs for the broker's data (root needed): {storage_suite.tmpfs_error}")
    row = storage_suite.run(scenario)
    if scenario == "broker-disk-full":
        notes = row["notes"]
        # Intake stopped, with an ERROR line naming the full disk, while the producer went on sending.
        assert "disk full" in notes["error_line"] and "ENOSPC" in notes["error_line"], notes
        assert notes["acknowledged_while_full"] == 0 < notes["attempted_while_full"], notes
    if "producer_counts" in row:  # images the broker did not acknowledge: counted failed, never dropped
        assert row["ok"], details(row)
        return
    check(row)
