"""Every Python that pyproject.toml's requires-python promises, tried as a new user would.

For each interpreter found (pyenv's versions, /usr/bin/python3, python3.N on PATH) that
satisfies requires-python:

  resolve   pip (upgraded in a throw-away venv) resolves requirements.txt for it:
            `pip install --dry-run --report` -- a pin it cannot install fails here;
  install   (--full) a venv under results/pythons/<version>/ with `make venv`'s recipe:
            pip upgraded, torch's CPU build from TORCH_INDEX first, then requirements.txt
            (kept between runs while the requirements are unchanged);
  import    every module of the product packages (no __main__);
  unit      pytest tests/unit in that venv.

`make test-pythons` runs all of it for every interpreter (tens of minutes, mostly
downloads, the first time); `make test-pythons-ci` (part of `make test`) only resolves
on each one and runs the unit tests on the oldest.  Prints a table; exit status 1 when
any step failed.  Standard library only: it runs under whatever python3 starts it.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "producer", "consumers", "inference", "stack", "experiments", "analysis", "dashboard")
IMPORT_ALL = f"""
import importlib, pkgutil
n = 0
for pkg in {PACKAGES!r}:
    importlib.import_module(pkg)
    n += 1
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
            n += 1
print(n, "modules imported")
"""
TORCH_INDEX = os.environ.get("TORCH_INDEX", "https://download.pytorch.org/whl/cpu")


def requires_python() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text, re.M)
    if not m:
        sys.exit("pyproject.toml: requires-python is not of the form \">=X.Y\"")
    return int(m.group(1)), int(m.group(2))


def version_of(python: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        return tuple(int(x) for x in out) if len(out) == 3 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def interpreters() -> list[tuple[str, tuple[int, int, int]]]:
    """(path, version) of every distinct interpreter found that requires-python admits, oldest first."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(str(pyenv / "versions" / "*" / "bin" / "python3")))
    candidates += ["/usr/bin/python3", *(shutil.which(f"python3.{n}") or "" for n in range(10, 20))]
    found: dict[tuple[int, int, int], str] = {}
    minimum = requires_python()
    for path in filter(None, candidates):
        if os.path.exists(path):
            version = version_of(path)
            if version and version[:2] >= minimum and version not in found:
                found[version] = path
    return sorted(((p, v) for v, p in found.items()), key=lambda pv: pv[1])


def run(cmd: list[str], log: Path, timeout: float, **kw) -> bool:
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, **kw).returncode == 0
        except subprocess.TimeoutExpired:
            fh.write(f"timed out after {timeout:.0f} s\n")
            return False


def make_venv(python: str, venv: Path, log: Path) -> bool:
    if not (venv / "bin" / "python").exists():
        if not run([python, "-m", "venv", str(venv)], log, 300):
            return False
    # The interpreter's own pip may predate what the pins need (Ubuntu 22.04: 22.0).
    return run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log, 600)


def resolve(python: str, out: Path, log: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="iot-pythons-") as tmp:
        venv = Path(tmp) / "venv"
        if not make_venv(python, venv, log):
            return "FAIL (venv)"
        report = out / "resolve-report.json"
        ok = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                  "--report", str(report), "-r", "requirements.txt"], log, 1800, cwd=ROOT)
        return "ok" if ok else "FAIL"


def requirements_digest() -> str:
    files = [ROOT / "requirements.txt", ROOT / "requirements-deploy.txt", *sorted((ROOT / "requirements").glob("*.txt"))]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def install(python: str, venv: Path, log: Path) -> str:
    stamp = venv / f".installed-{requirements_digest()}"
    if stamp.exists():
        return "ok (kept)"
    if not make_venv(python, venv, log):
        return "FAIL (venv)"
    vpy = str(venv / "bin" / "python")
    torch = re.search(r"^torch==\S+", (ROOT / "requirements/runtime-torch.txt").read_text(), re.M).group(0)
    # As make venv: the CPU build first where PyTorch's index answers, else PyPI's with the rest.
    run([vpy, "-m", "pip", "install", "--quiet", "--retries", "0", "--timeout", "15", "--no-deps",
         "--index-url", TORCH_INDEX, torch], log, 1800)
    if not run([vpy, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"], log, 3600, cwd=ROOT):
        return "FAIL"
    for old in venv.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return "ok"


def unit_tests(vpy: str, log: Path, extra: list[str]) -> str:
    cmd = [vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit", *extra]
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    with open(log, "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode < 0:  # a crash (a signal) prints no summary line: name the test it was in
        where = re.findall(r'File "[^"]*/(tests/unit/test_\w+\.py)", line \d+ in (\w+)', proc.stderr + proc.stdout)
        return f"FAIL: signal {-proc.returncode}" + (f" in {where[0][0]}::{where[0][1]}" if where else "")
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else f"exit {proc.returncode}"
    summary = re.sub(r" in [\d.]+s.*$", "", summary)
    return ("ok: " if proc.returncode == 0 else "FAIL: ") + summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="install, import and unit-test on every interpreter")
    ap.add_argument("--unit-oldest", action="store_true",
                    help="without --full: install and unit-test on the oldest interpreter only")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "pythons", help="venvs and logs (default: %(default)s)")
    ap.add_argument("--only", help="only interpreters whose version starts with this (3.10, 3.11.2, ...)")
    ap.add_argument("--pytest-args", default="", help="more arguments of the unit tests' pytest (--deselect ...)")
    args = ap.parse_args(argv)

    found = [(p, v) for p, v in interpreters() if not args.only or ".".join(map(str, v)).startswith(args.only)]
    if not found:
        print(f"no interpreter found that requires-python >= {'.'.join(map(str, requires_python()))} admits")
        return 1
    rows = []
    failed = False
    for i, (python, version) in enumerate(found):
        name = ".".join(map(str, version))
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        log = out / "log.txt"
        log.write_text("")
        t0 = time.monotonic()
        row = {"python": python, "version": name, "resolve": resolve(python, out, log)}
        if row["resolve"] == "ok" and (args.full or (args.unit_oldest and i == 0)):
            row["install"] = install(python, out / "venv", log)
            if row["install"].startswith("ok"):
                vpy = str(out / "venv" / "bin" / "python")
                ok = run([vpy, "-c", IMPORT_ALL], log, 900, cwd=ROOT)
                row["import"] = "ok" if ok else "FAIL"
                row["unit"] = unit_tests(vpy, log, args.pytest_args.split())
        row["seconds"] = f"{time.monotonic() - t0:.0f}"
        failed |= any(str(v).startswith("FAIL") for v in row.values())
        rows.append(row)
        print(f"{name}: {row}  (log: {log})", flush=True)

    cols = ["version", "python", "resolve", "install", "import", "unit", "seconds"]
    widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    print()
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "-")).ljust(widths[c]) for c in cols))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
