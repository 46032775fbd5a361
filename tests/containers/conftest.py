"""The Compose pipeline test builds images and starts containers (minutes, root): it runs
only when selected (``pytest -m containers tests/containers``, i.e. ``make
test-containers``) or with RUN_CONTAINERS=1, never as part of the default ``make test``.
The static checks of compose.yaml and deploy/k8s/ in this folder are not marked and run
in ``make test``."""

from __future__ import annotations

import pytest

from common.settings import SuiteSettings


def pytest_collection_modifyitems(config, items):
    if "containers" in (config.getoption("markexpr") or "") or SuiteSettings().run_containers:
        return
    skip = pytest.mark.skip(reason="container suite: run with `make test-containers` "
                                   "(pytest -m containers tests/containers)")
    for item in items:
        if item.get_closest_marker("containers"):
            item.add_marker(skip)
