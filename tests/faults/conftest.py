"""The fault suite is slow (minutes) and starts its own stack: it runs only when
selected (``pytest -m faults tests/faults``, i.e. ``make test-faults``) or with
RUN_FAULTS=1, never as part of the default ``make test``.  The broker's storage faults
(marker ``broker_storage``, not ``faults``: outside make test-faults, CI's budget) run only
with ``pytest -m broker_storage tests/faults`` (make test-faults-broker-storage) or
RUN_BROKER_STORAGE_FAULTS=1."""

from __future__ import annotations

import pytest

from common.settings import SuiteSettings


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: fault-injection suite on its own local stack "
                                       "(make test-faults; skipped unless selected with -m faults)")
    config.addinivalue_line("markers", "broker_storage: the broker's storage faults, s3rver killed and its disk "
                                       "full (make test-faults-broker-storage, root; not in make test-faults; "
                                       "skipped unless selected with -m broker_storage)")


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("markexpr") or ""
    suites = SuiteSettings()
    skip = pytest.mark.skip(reason="fault suite: run with `pytest -m faults tests/faults` (make test-faults)")
    skip_storage = pytest.mark.skip(reason="the broker's storage faults: run with `pytest -m broker_storage "
                                           "tests/faults` (make test-faults-broker-storage)")
    for item in items:
        if item.get_closest_marker("broker_storage"):
            if "broker_storage" not in markexpr and not suites.run_broker_storage_faults:
                item.add_marker(skip_storage)
        elif "faults" in item.keywords and "faults" not in markexpr and not suites.run_faults:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    from tests.faults.run import LAST_REPORT

    if LAST_REPORT:
        terminalreporter.section("fault injection")
        for line in "\n".join(LAST_REPORT).splitlines():
            terminalreporter.write_line(line)
