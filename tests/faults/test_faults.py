"""Fault injection, slow inference and overload on the real local stack (tests/faults/run.py).

Each scenario sends FAULT_IMAGES (default 1000) images and checks that every one is
in the store exactly once with a prediction, that the producer got every result and
that the run's summary says ``lost: 0``.  The table and ``faults.json`` are written
to results/faults/<timestamp>/ (docs/RELIABILITY.md quotes the last run).  The storage
scenarios run again on PostgreSQL and on CouchDB: tests/faults/test_faults_postgres.py,
tests/faults/test_faults_couchdb.py; the inference consumer's with INFERENCE_MODE=embedded:
tests/faults/test_faults_embedded.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from common.settings import SuiteSettings
from tests.faults.run import LAST_REPORT, ROOT, SCENARIOS, FaultSuite

pytestmark = pytest.mark.faults


def run_suite(store: str, suffix: str = "", latest_name: str = "latest", stack_env: dict | None = None,
              out: Path | None = None):
    """A FaultSuite on its own stack for the module (in ``out``, default a new
    results/faults/<timestamp><suffix>); its table and faults.json after."""
    out = out or suite_dir(suffix)
    started = time.time()
    suite = SuiteSettings()
    s = FaultSuite(out, images=suite.fault_images, rate=suite.fault_rate, store=store, stack_env=stack_env)
    with s:
        yield s
    path = s.write(started)
    latest = out.parent / latest_name
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.name)
    LAST_REPORT.extend([s.table(), f"faults.json: {path} ({time.time() - started:.0f} s)"])


def suite_dir(suffix: str = "") -> Path:
    return ROOT / "results" / "faults" / (time.strftime("%Y%m%d-%H%M%S") + suffix)


@pytest.fixture(scope="module")
def suite():
    yield from run_suite("mongodb")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_loses_nothing(suite, scenario):
    check(suite.run(scenario))


def check(row: dict) -> None:
    details = json.dumps({k: v for k, v in row.items() if k not in ("e2e_ms",)}, indent=1,
                         default=str)[-6000:]
    assert row["lost"] == 0, details
    assert row["results"] == row["images"] >= 1, details
    assert row["duplicate_documents"] == 0 and row["duplicated_documents_checked"] == 0, details
    assert row["half_written_documents"] == 0 and row["missing_documents"] == 0, details
    assert row["ok"], details
