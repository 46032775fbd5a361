"""The broker's fault scenarios (tests/faults/broker.py) on a stack of their own, its broker
on s3rver (STACK_BROKER_STORAGE=s3 unless the environment says otherwise): SIGKILLed mid-stream, down for 30 s (with the
producer's normal buffer and with a small one), restarted while the inference group
rebalances.  Same checks as tests/faults/test_faults.py; the small-buffer case is judged on
stored == acknowledged and failed == attempted - acknowledged.  The table and faults.json
go to results/faults/<timestamp>-broker/ (latest-broker).

With STACK_BROKER_STORAGE=memory every scenario fails: the broker's death stops the stack."""

from __future__ import annotations

import json

import pytest

from common.settings import StackSettings, given
from tests.faults.broker import BROKER_FAULTS, BROKER_SCENARIOS
from tests.faults.test_faults import check, run_suite

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def broker_suite():
    # On s3rver unless STACK_BROKER_STORAGE says otherwise (memory: every scenario fails).
    yield from run_suite("mongodb", "-broker", "latest-broker",
                         {"STACK_BROKER_STORAGE": given(StackSettings(), "stack_broker_storage") or "s3"})


@pytest.mark.parametrize("scenario", BROKER_SCENARIOS)
def test_broker_scenario_loses_nothing(broker_suite, scenario):
    row = broker_suite.run(scenario)
    if BROKER_FAULTS[scenario].expect_failed:
        assert row["ok"], json.dumps({k: v for k, v in row.items() if k != "e2e_ms"}, indent=1, default=str)[-6000:]
        return
    if scenario == "broker-restart-rebalance":
        assert row["notes"]["rebalancing_at_kill"], row["notes"]
    check(row)
