"""The VMs' Python packages without an index: `pip download` on the host (which reaches
PyPI) for the containers' interpreter (Debian bookworm: CPython 3.11, glibc 2.36, x86_64),
into a cache directory outside the clone, served over HTTP on the test network's gateway.
pip gets the files' pins for 3.11 (tests/pins.py: markers evaluated for the containers'
Python, not for the host's), so a 3.10 host downloads what the VMs install.
The roles install from it with iot_app_pip_index_args:
  ["--no-index", "--find-links", "http://<gateway>:<port>/"]"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common.settings import RehearsalSettings
from tests.pins import pins_for

from . import docker

log = logging.getLogger("rehearsal.wheelhouse")

WHEELHOUSE = Path(RehearsalSettings().iot_rehearsal_wheelhouse or docker.CACHE_DIR / "wheelhouse")
PYTHON_VERSION = "3.11"
ABI = "cp311"
# bookworm has glibc 2.36: every manylinux tag up to 2.36 runs there.  pip expands only the
# legacy manylinux2014/2010 names itself, so the perennial tags are listed one by one.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
# What a venv needs beyond the requirements (`pip install -U pip setuptools wheel` offline).
EXTRA = ["pip", "setuptools", "wheel"]


def included_files(requirement_files: list[Path]) -> list[Path]:
    """The files and every file they include with -r/-c (recursively), in order."""
    seen: list[Path] = []

    def visit(path: Path) -> None:
        path = path.resolve()
        if path in seen:
            return
        seen.append(path)
        for line in path.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2 and parts[0] in ("-r", "--requirement", "-c", "--constraint"):
                visit(path.parent / parts[1])
            elif parts and parts[0].startswith(("--requirement=", "--constraint=")):
                visit(path.parent / parts[0].split("=", 1)[1])

    for p in requirement_files:
        visit(Path(p))
    return seen


def key(requirement_files: list[Path], extra: list[str]) -> str:
    h = hashlib.sha256()
    for path in included_files(requirement_files):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join(sorted(extra)).encode() + b"\0" + " ".join(PLATFORMS).encode() + ABI.encode())
    return h.hexdigest()[:16]


def download(requirement_files: list[Path], extra: list[str] | None = None, dest: Path = WHEELHOUSE,
             force: bool = False) -> Path:
    """Fills `dest` with wheels for every requirement file (and `extra`); skipped when the
    same files were downloaded before (stamp file keyed by their content)."""
    extra = EXTRA if extra is None else extra
    requirement_files = [Path(p).resolve() for p in requirement_files]
    for path in requirement_files:
        if not path.is_file():
            raise FileNotFoundError(f"requirement file {path} not found")
    dest.mkdir(parents=True, exist_ok=True)
    stamp = dest / f".complete-{key(requirement_files, extra)}"
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and not force:
            log.info("wheelhouse %s up to date (%s)", dest, stamp.name)
            return dest
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(dest),
               "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
               "--abi", ABI, "--abi", "abi3", "--abi", "none"]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        t0 = time.monotonic()
        log.info("pip download for cp311/manylinux x86_64 into %s (%s)", dest,
                 ", ".join(p.name for p in requirement_files))
        with tempfile.NamedTemporaryFile("w", prefix="iot-pins-", suffix=".txt") as pins:
            lines = (pin for path in requirement_files for pin in pins_for(path, PYTHON_VERSION).splitlines())
            pins.write("".join(f"{pin}\n" for pin in dict.fromkeys(lines)))  # each once, in order
            pins.flush()
            proc = subprocess.run([*cmd, "-r", pins.name, *extra], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                               f"{proc.stderr[-4000:]}")
        for old in dest.glob(".complete-*"):
            old.unlink()
        stamp.write_text(" ".join(str(p) for p in requirement_files) + "\n")
        log.info("wheelhouse: %d files, %.0f MB, %.0fs", len(list(dest.glob("*.whl"))),
                 sum(p.stat().st_size for p in dest.glob("*")) / 1e6, time.monotonic() - t0)
    return dest


# ------------------------------------------------------------------ HTTP server
def serve(directory: Path, host: str, port: int, run_dir: Path) -> int:
    """`python -m http.server` on host:port in the background (directory listing = the
    find-links page).  Returns its pid (run_dir/wheelhouse.pid)."""
    pid_file = run_dir / "wheelhouse.pid"
    url = f"http://{host}:{port}/"
    if pid_file.exists():
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            if _answers(url):
                return pid
    log_file = open(run_dir / "wheelhouse.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", host,
                             "--directory", str(directory)], stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _answers(url):
            return proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"wheelhouse server exited ({proc.returncode}); see {run_dir / 'wheelhouse.log'}")
        time.sleep(0.2)
    raise RuntimeError(f"wheelhouse server {url} did not answer")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop(run_dir: Path) -> bool:
    pid_file = run_dir / "wheelhouse.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (ValueError, OSError):
        pid_file.unlink(missing_ok=True)
        return False
    pid_file.unlink(missing_ok=True)
    return True
