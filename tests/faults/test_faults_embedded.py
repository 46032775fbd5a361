"""The inference consumer's fault scenarios with INFERENCE_MODE=embedded (the torch model in
the consumer, no inference service; tests/faults/run.py, EMBEDDED_SCENARIOS): the consumer
killed mid-batch, a second one joining and leaving or killed, its own model slower than
the poll interval, overload.  Same checks as tests/faults/test_faults.py, on a stack of its
own; the table and faults.json go to results/faults/<timestamp>-embedded/ (latest-embedded).

    pytest -m faults tests/faults/test_faults_embedded.py [-k rebalance]
"""

from __future__ import annotations

import pytest

from tests.binaries import required_module
from tests.faults.run import EMBEDDED_ENV, EMBEDDED_SCENARIOS
from tests.faults.test_faults import check, run_suite

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def embedded_suite():
    required_module("torch")
    yield from run_suite("mongodb", "-embedded", "latest-embedded", stack_env=EMBEDDED_ENV)


@pytest.mark.parametrize("scenario", EMBEDDED_SCENARIOS)
def test_embedded_scenario_loses_nothing(embedded_suite, scenario):
    row = embedded_suite.run(scenario)
    assert not embedded_suite.stack.pid("inference"), "the embedded stack started an inference service"
    check(row)
