"""The Compose pipeline test builds images and starts containers (minutes, root): it runs
only when selected (``pytest -m containers tests/containers``, i.e. ``make
test-containers``) or with RUN_CONTAINERS=1, never as part of the default ``make test``.
The static checks of compose.yaml and deploy/k8s/ in this folder are not marked and run
in ``make test``.  The torch image's test (test_torch_image.py, marked ``torch_image`` too)
runs only with ``make test-containers-torch``; ``make test-containers`` leaves it out."""

from __future__ import annotations

import os
import shutil

import pytest

from common.settings import SuiteSettings
from tests.binaries import unavailable


def pytest_collection_modifyitems(config, items):
    if "containers" in (config.getoption("markexpr") or "") or SuiteSettings().run_containers:
        return
    skip = pytest.mark.skip(reason="container suite: run with `make test-containers` "
                                   "(pytest -m containers tests/containers)")
    skip_torch = pytest.mark.skip(reason="the torch image: run with `make test-containers-torch`")
    for item in items:
        if item.get_closest_marker("containers"):
            item.add_marker(skip_torch if item.get_closest_marker("torch_image") else skip)


@pytest.fixture(scope="module")
def engine():
    """A Docker engine answering (started like the rehearsal's if none does) and a way to
    make the debootstrap base image; skipped with the reason where there is none."""
    from tests.containers import images
    from tests.rehearsal import docker

    if os.geteuid() != 0:
        unavailable("needs root (Docker engine, debootstrap): sudo make test-containers")
    try:
        docker.ensure_engine()
    except (docker.DockerError, OSError) as exc:
        unavailable(f"no Docker engine could be started: {exc}")
    if not shutil.which("debootstrap") and not docker.image_exists(images.base_tag()):
        unavailable("debootstrap not found (the base image): run scripts/install-system-packages.sh")
