"""The storage fault scenarios on PostgreSQL (STORE=postgres, tests/faults/stores.py): the
DB writer killed mid-batch, the server killed and restarted on its data, one row refused
inside a batch.  Same checks as tests/faults/test_faults.py, on a stack of its own; the
table and faults.json go to results/faults/<timestamp>-postgres/ (latest-postgres)."""

from __future__ import annotations

import pytest

from tests.faults.run import POSTGRES_SCENARIOS
from tests.faults.test_faults import check, run_suite

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def postgres_suite():
    from tests import pg

    pg.programs()  # skipped, or failed under CI=true, without PostgreSQL
    yield from run_suite("postgres", "-postgres", "latest-postgres")


@pytest.mark.parametrize("scenario", POSTGRES_SCENARIOS)
def test_postgres_scenario_loses_nothing(postgres_suite, scenario):
    check(postgres_suite.run(scenario))
