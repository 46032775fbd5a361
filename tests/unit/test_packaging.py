"""pyproject.toml names the dependency groups; requirements*.txt pin them (the lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pinned() -> dict[str, str]:
    out = {}
    for name in ("requirements.txt", "requirements-deploy.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                m = re.match(r"([A-Za-z0-9_.\-]+)\s*(==\s*\S+)?", line)
                out[m.group(1).lower().replace("_", "-")] = m.group(2) or ""
    return out


def test_every_declared_dependency_is_in_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        declared += group
    pinned = _pinned()
    missing = [d for d in declared if d.lower() not in pinned]
    assert not missing, f"declared in pyproject.toml but not in requirements*.txt: {missing}"
    # and the other way round: nothing installed that no group asks for
    names = {d.lower() for d in declared}
    assert not sorted(set(pinned) - names), f"pinned but in no group: {sorted(set(pinned) - names)}"
