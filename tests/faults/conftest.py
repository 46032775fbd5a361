"""The fault suite is slow (minutes) and starts its own stack: it runs only when
selected (``pytest -m faults tests/faults``, i.e. ``make test-faults``) or with
RUN_FAULTS=1, never as part of the default ``make test``."""

from __future__ import annotations

import pytest

from common.settings import SuiteSettings


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: fault-injection suite on its own local stack "
                                       "(make test-faults; skipped unless selected with -m faults)")


def pytest_collection_modifyitems(config, items):
    if "faults" in (config.getoption("markexpr") or "") or SuiteSettings().run_faults:
        return
    skip = pytest.mark.skip(reason="fault suite: run with `pytest -m faults tests/faults` (make test-faults)")
    for item in items:
        if "faults" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    from tests.faults.run import LAST_REPORT

    if LAST_REPORT:
        terminalreporter.section("fault injection")
        for line in "\n".join(LAST_REPORT).splitlines():
            terminalreporter.write_line(line)
