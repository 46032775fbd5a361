"""The pins of a requirements file for one Python version, environment markers evaluated
for that version.  pip evaluates markers for the interpreter it runs on, even with
``--python-version``: asked for 3.11's wheels from a 3.10 host it would take the 3.10 pins
(``pymongo==4.18.3; python_version < "3.11"``).  The controller's resolution checks
(tests/deploy) and the wheelhouses of the rehearsal and the container images
(tests/rehearsal/wheelhouse.py) hand pip these pins instead of the files."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement

from tests.support import ROOT


def pins_for(requirements: str | Path, python: str, drop: frozenset[str] | set[str] = frozenset()) -> str:
    """The pins of ``requirements`` (relative to the checkout, or absolute; its -r includes
    followed) that apply to CPython ``python`` ("3.11"), one a line, without their markers;
    the packages named in ``drop`` left out."""
    env = {"python_version": python, "python_full_version": python + ".0"}
    out = []
    for raw in (ROOT / requirements).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out.append(pins_for(Path(requirements).parent / line[3:].strip(), python, drop))
        elif line:
            req = Requirement(line)
            if (req.marker is None or req.marker.evaluate(env)) and req.name not in drop:
                req.marker = None
                out.append(str(req))
    return "\n".join(out)
