"""Finding promtool, prometheus and chromedriver for the tests: skipped with a clear
message where they are not installed, except under CI=true, where a missing binary fails
the test (scripts/install-system-packages.sh installs the Debian packages)."""

from __future__ import annotations

import os
import shutil

import pytest


def required_binary(name: str, package: str = "prometheus") -> str:
    path = shutil.which(name)
    if path:
        return path
    message = (f"{name} is not installed (Debian package {package!r}: "
               f"sudo scripts/install-system-packages.sh)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)
