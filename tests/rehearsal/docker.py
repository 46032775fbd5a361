"""The Docker engine of the rehearsal: started on demand without iptables and without the
default bridge (no registry, no NAT: images come from debootstrap and containers live on
a user-defined bridge network the harness creates)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from common.settings import RehearsalSettings

log = logging.getLogger("rehearsal.docker")

CACHE_DIR = Path(RehearsalSettings().iot_rehearsal_cache)
DOCKERD_ARGS = ["--iptables=false", "--ip6tables=false", "--bridge=none"]
LABEL = "iot-rehearsal"


class DockerError(RuntimeError):
    pass


def docker_bin() -> str:
    path = shutil.which("docker")
    if not path:
        raise DockerError("docker CLI not found: run scripts/install-system-packages.sh")
    return path


def docker(*args: str, check: bool = True, input: str | bytes | None = None, timeout: float | None = 300,
           capture: bool = True) -> subprocess.CompletedProcess:
    """Runs `docker ARGS`; returns the CompletedProcess (text mode unless input is bytes)."""
    text = not isinstance(input, bytes)
    proc = subprocess.run([docker_bin(), *args], input=input, timeout=timeout, text=text,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
        err = proc.stderr if capture else ""
        raise DockerError(f"docker {' '.join(args[:4])} ... failed ({proc.returncode}): {err!s:.2000}")
    return proc


def engine_running() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20).returncode == 0
    except (DockerError, subprocess.TimeoutExpired):
        return False


def _pid_file() -> Path:
    return CACHE_DIR / "dockerd.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def ensure_engine(timeout_s: float = 90.0, log_file: Path | None = None) -> bool:
    """Starts dockerd in the background unless an engine already answers.

    Returns True when this call started it.  Its pid goes to CACHE_DIR/dockerd.pid so that
    stop_engine() stops only an engine the rehearsal started."""
    if engine_running():
        return False
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise DockerError("dockerd not found: run scripts/install-system-packages.sh (as root)")
    if os.geteuid() != 0:
        raise DockerError("starting dockerd needs root")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_file = log_file or CACHE_DIR / "dockerd.log"
    pid_file = _pid_file()
    if pid_file.exists():
        try:
            old = int(pid_file.read_text().strip())
        except ValueError:
            old = 0
        if old and _alive(old):
            log.info("dockerd %d (started earlier) is not answering yet; waiting", old)
            return _wait(timeout_s, log_file, started=False)
    log.info("starting dockerd %s (log %s)", " ".join(DOCKERD_ARGS), log_file)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([dockerd, *DOCKERD_ARGS], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return _wait(timeout_s, log_file, started=True, proc=proc)


def _wait(timeout_s: float, log_file: Path, started: bool, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine_running():
            return started
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            raise DockerError(f"dockerd exited with {proc.returncode}; log tail:\n{tail}")
        time.sleep(0.5)
    raise DockerError(f"dockerd did not answer within {timeout_s:.0f}s; see {log_file}")


def stop_engine(timeout_s: float = 30.0) -> bool:
    """Stops the engine only if ensure_engine() started it (pid file); True if stopped."""
    pid_file = _pid_file()
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid_file.unlink()
        return False
    if not _alive(pid):
        pid_file.unlink()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.3)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------ images
def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


def import_rootfs(tarball: Path, tag: str) -> None:
    """`docker import` a rootfs tarball (the image has no CMD: containers name /sbin/init)."""
    log.info("docker import %s -> %s", tarball, tag)
    with open(tarball, "rb") as f:
        proc = subprocess.run([docker_bin(), "import", "--change", f"LABEL {LABEL}=vm-image",
                               "-", tag], stdin=f, capture_output=True, timeout=1800)
    if proc.returncode != 0:
        raise DockerError(f"docker import failed: {proc.stderr.decode(errors='replace')}")


# ------------------------------------------------------------------ networks
def network_inspect(name: str) -> dict | None:
    proc = docker("network", "inspect", name, check=False, timeout=30)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def ensure_network(name: str, subnet: str, gateway: str) -> dict:
    """A user-defined bridge network; the host's address on it is the gateway."""
    info = network_inspect(name)
    if info is not None:
        configs = info.get("IPAM", {}).get("Config") or []
        if not any(c.get("Subnet") == subnet for c in configs):
            raise DockerError(f"network {name} exists with another subnet {configs}; remove it "
                              f"(harness teardown) or choose another name")
        return info
    log.info("creating network %s %s (gateway %s)", name, subnet, gateway)
    docker("network", "create", "--driver", "bridge", "--subnet", subnet, "--gateway", gateway,
           "--label", f"{LABEL}=network", "-o", "com.docker.network.bridge.enable_ip_masquerade=false",
           name, timeout=60)
    return network_inspect(name) or {}


def remove_network(name: str) -> bool:
    if network_inspect(name) is None:
        return False
    docker("network", "rm", name, timeout=60)
    return True


# ------------------------------------------------------------------ containers
def container_inspect(name: str) -> dict | None:
    proc = docker("container", "inspect", name, check=False, timeout=30)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def containers_with_label(label: str) -> list[str]:
    proc = docker("ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}", timeout=30)
    return [n for n in proc.stdout.split() if n]


def remove_container(name: str) -> bool:
    return docker("rm", "-f", "-v", name, check=False, timeout=120).returncode == 0
