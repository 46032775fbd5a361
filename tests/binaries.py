"""What a test needs from the machine, found or reported clearly.

A test whose tool or package is missing is skipped with a message that says how to install
it, except under CI=true (.ci/run): there everything the project installs itself
(scripts/install-system-packages.sh, make venv, make pouchdb-server, make s3rver) must be
present, and .ci/run runs as root, so a missing tool or a tmpfs that cannot be mounted fails
the test instead of hiding it among the skips.  kubectl, which CI's machine carries
(scripts/install-system-packages.sh says why the script does not install it), is required
there too.  What neither provides (the optional runtimes of requirements/runtime-*.txt,
network access, a Python without tarfile's data filter, a system without /proc) is no
reason to fail.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from common.settings import SuiteSettings

VENV_BIN = Path(sys.executable).parent


def under_ci() -> bool:
    return SuiteSettings().ci.lower() == "true"


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


def mount_tmpfs(path: Path, options: str) -> None:
    """A tmpfs of its own at ``path`` (``options``: mount's -o, its size), to fill a disk
    quickly; unmount it with ``umount -l``.  Mounting needs root: skip without it, fail under
    CI=true (.ci/run runs as root)."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs at {path} (root needed): {mounted.stderr.strip()}")
