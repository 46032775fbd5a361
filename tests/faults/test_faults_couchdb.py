"""The storage fault scenarios on CouchDB (STORE=couchdb: the stack's pouchdb-server, on
disk; tests/faults/stores.py): the DB writer killed mid-batch, the server SIGKILLed and
restarted on its data, one document refused inside a batch.  Same checks as
tests/faults/test_faults.py, on a stack of its own; the table and faults.json go to
results/faults/<timestamp>-couchdb/ (latest-couchdb)."""

from __future__ import annotations

import pytest

from tests.faults.run import COUCH_SCENARIOS
from tests.faults.test_faults import check, run_suite

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def couch_suite():
    from tests import couch

    couch.binary()  # skipped, or failed under CI=true, without pouchdb-server
    yield from run_suite("couchdb", "-couchdb", "latest-couchdb")


@pytest.mark.parametrize("scenario", COUCH_SCENARIOS)
def test_couchdb_scenario_loses_nothing(couch_suite, scenario):
    check(couch_suite.run(scenario))
