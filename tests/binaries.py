"""What a test needs from the machine, found or reported clearly.

A test whose tool or package is missing is skipped with a message that says how to install
it, except under CI=true (.ci/run): there everything the project installs itself
(scripts/install-system-packages.sh, make venv) must be present, so a missing one fails the
test instead of hiding it among the skips.  What the project does not install (the optional
runtimes of requirements/runtime-*.txt, kubectl, network access) is no reason to fail.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

VENV_BIN = Path(sys.executable).parent


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Skip with ``message``; under CI=true fail with it.  For what the project installs."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line
    if under_ci():
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message, allow_module_level=True)


def required_binary(name: str, package: str = "prometheus") -> str:
    """The path of a tool from a Debian package that scripts/install-system-packages.sh installs."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"{name} is not installed (Debian package {package!r}: "
                f"sudo scripts/install-system-packages.sh)")


def venv_tool(name: str) -> str:
    """The path of a command a Python requirement installs (ansible-playbook, nx-27017, ...):
    next to this interpreter, else on PATH."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    unavailable(f"{name} is not installed (make venv: pip install -r requirements.txt)")


def required_module(name: str) -> ModuleType:
    """pytest.importorskip for a package requirements.txt installs (tensorflow, yaml, ...)."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"Python package {name!r} cannot be imported ({exc}; make venv: "
                    f"pip install -r requirements.txt)")
