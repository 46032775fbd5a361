"""The local stack's public API (docs/ARCHITECTURE.md, "Packages and layers"): ``up``,
``down``, ``status`` of the supervisor in the background, the fault hooks, and
:class:`LocalStack`, one stack of its own on free ports (env, logs, pids, signals, CPU and
memory of each component's process tree, read with psutil).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from common.settings import mask_env
from stack.stores import ENDPOINT_KEYS as STORE_ENDPOINT_KEYS
from stack.supervisor import ROOT, pid_alive, stack_dir

log = logging.getLogger(__name__)

# Endpoints the stack publishes in stack.env; set in the environment they mean
# "use these external servers", so a stack of its own must not inherit them.
STACK_ENV_KEYS = ("KAFKA_BOOTSTRAP_SERVERS", *STORE_ENDPOINT_KEYS, "INFERENCE_URL")
COMPONENTS = ("s3rver", "kafka", "mongo", "inference", "inference-consumer", "db-consumer")

__all__ = ["COMPONENTS", "LocalStack", "STACK_ENV_KEYS", "clean", "down", "hold", "no_restart", "process_tree",
           "read_env", "release", "read_pid", "run_from", "signal_component", "stack_dir", "status", "supervisor_pid",
           "up"]


def read_env(path: Path) -> dict[str, str]:
    """A KEY=VALUE file (stack.env, an experiment's env file); # comments skipped."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def supervisor_pid(d: Path) -> int | None:
    pid = read_pid(d / "supervisor.pid")
    return pid if pid and pid_alive(pid) else None


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every live descendant (empty if ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def up(d: Path, timeout_s: float, env: dict | None = None) -> int:
    """Start the supervisor (with ``env``, default this process's) unless it runs; wait
    until every component is ready.  0 when up, 1 (and everything stopped) when not."""
    if supervisor_pid(d) and (d / "ready").exists():
        print(f"stack already up ({d / 'stack.env'})")
        return 0
    supervisor = None
    if supervisor_pid(d):
        print("stack is starting (supervisor running); waiting")
    else:
        for name in ("failed", "ready"):
            (d / name).unlink(missing_ok=True)
        (d / "logs").mkdir(parents=True, exist_ok=True)
        with open(d / "logs" / "supervisor.log", "ab") as logfile:
            supervisor = subprocess.Popen([sys.executable, "-m", "stack", "supervise"], cwd=ROOT,
                             env={**(os.environ if env is None else env), "STACK_DIR": str(d)},
                             stdout=logfile, stderr=logfile, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    started = time.monotonic()
    deadline = started + timeout_s
    shown = 0
    while time.monotonic() < deadline:
        lines = (d / "logs" / "supervisor.log").read_text(errors="replace").splitlines() \
            if (d / "logs" / "supervisor.log").exists() else []
        for line in lines[shown:]:
            if " stack " in line or "stack:" in line or "started" in line or "ready" in line:
                print("  " + line.split("] ", 1)[-1])
        shown = len(lines)
        if (d / "ready").exists():
            print(f"stack is up; endpoints in {d / 'stack.env'}:")
            print("  " + mask_env((d / "stack.env").read_text().strip()).replace("\n", "\n  "))
            return 0
        # Gone: the supervisor started here has exited (on a loaded host its pid file can
        # take longer than any fixed wait); one started before, when its pid file is gone.
        vanished = (supervisor.poll() is not None if supervisor is not None
                    else time.monotonic() > started + 5 and not supervisor_pid(d))
        if (d / "failed").exists() or vanished:
            reason = (d / "failed").read_text().strip() if (d / "failed").exists() else "supervisor exited"
            print(f"stack failed to start: {reason}", file=sys.stderr)
            print(f"logs: {d / 'logs'}", file=sys.stderr)
            down(d)
            return 1
        time.sleep(0.5)
    print(f"stack not ready after {timeout_s:.0f} s; logs in {d / 'logs'}", file=sys.stderr)
    down(d)
    return 1


def down(d: Path, timeout_s: float = 90) -> int:
    """Stop the supervisor (consumers first), then anything a crashed one left behind."""
    pid = supervisor_pid(d)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    for pid_file in (d / "pids").glob("*.pid") if (d / "pids").is_dir() else []:
        pid = read_pid(pid_file)
        if pid and pid_alive(pid):
            log.warning("killing leftover %s (pid %d)", pid_file.stem, pid)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pid_file.unlink(missing_ok=True)
    for name in ("ready", "supervisor.pid"):
        (d / name).unlink(missing_ok=True)
    print("stack is down")
    return 0


# What marks a directory as a stack's: ``clean`` removes nothing else.
STACK_MARKERS = ("stack.env", "supervisor.pid", "pids", "logs", "data", "prometheus")


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def clean(d: Path) -> int:
    """Stop the stack and remove its directory: the stores' data, the logs, everything
    ``up`` wrote.  Says what it removed, and refuses a directory that is not a stack's."""
    if not d.exists():
        print(f"nothing to remove: {d} does not exist")
        return 0
    if d == Path(d.anchor) or d == Path.home() or not any((d / m).exists() for m in STACK_MARKERS):
        print(f"refusing to remove {d}: not a stack directory (none of {', '.join(STACK_MARKERS)})",
              file=sys.stderr)
        return 2
    down(d)
    if supervisor_pid(d):
        print(f"the stack in {d} is still running: nothing removed", file=sys.stderr)
        return 1
    entries = sorted((d / "data").iterdir()) if (d / "data").is_dir() else []
    for entry in entries:
        print(f"removing {entry} ({_size(entry) / 1e6:.1f} MB of stored data)")
    rest = _size(d) - sum(_size(e) for e in entries)
    shutil.rmtree(d)
    print(f"removed {d}: {len(entries)} store(s)' data and {rest / 1e6:.1f} MB of logs, pids and config")
    return 0


def status(d: Path) -> int:
    sup = supervisor_pid(d)
    print(f"supervisor: {'running (pid %d)' % sup if sup else 'not running'}"
          f"{', ready' if (d / 'ready').exists() else ''}")
    for pid_file in sorted((d / "pids").glob("*.pid")) if (d / "pids").is_dir() else []:
        pid = read_pid(pid_file)
        held = " (held down)" if (d / "hold" / pid_file.stem).exists() else ""
        print(f"  {pid_file.stem:20} pid {pid}: {'alive' if pid and pid_alive(pid) else 'dead'}{held}")
    if (d / "failed").exists():
        print(f"failed: {(d / 'failed').read_text().strip()}")
    if (d / "stack.env").exists():
        print(mask_env((d / "stack.env").read_text().strip()))
    return 0 if sup else 1


def hold(d: Path, name: str) -> None:
    """Keep component ``name`` down after it next stops (until ``release``)."""
    (d / "hold").mkdir(parents=True, exist_ok=True)
    (d / "hold" / name).touch()


def release(d: Path, name: str) -> None:
    """Let the supervisor start ``name`` again."""
    (d / "hold" / name).unlink(missing_ok=True)


def run_from(d: Path, name: str, checkout: Path | None) -> None:
    """Start ``name`` from another checkout of this repository at its next (re)start, or
    from this one again (``None``): a local rolling upgrade is this, then a SIGTERM."""
    f = d / "checkout" / name
    if checkout is None:
        f.unlink(missing_ok=True)
        return
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f"{Path(checkout).resolve()}\n")


def no_restart(d: Path) -> dict[str, str]:
    """Component name -> why its death stops the stack ("" when the supervisor restarts it),
    as the running supervisor planned them (components.json)."""
    try:
        return {c["name"]: c["no_restart"] for c in json.loads((d / "components.json").read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def signal_component(d: Path, name: str, sig: int) -> int:
    pid = read_pid(d / "pids" / f"{name}.pid")
    if not pid or not pid_alive(pid):
        print(f"{name} is not running", file=sys.stderr)
        return 1
    os.killpg(pid, sig)
    print(f"sent {signal.Signals(sig).name} to {name} (pid {pid})")
    return 0


class LocalStack:
    """One embedded stack in ``directory`` on free ports, configured through ``env``.

    The handle the tests, the fault suite and the benchmark share::

        with LocalStack(tmp / "stack", {"MODEL_WEIGHTS": "random"}) as st:
            st.env["KAFKA_BOOTSTRAP_SERVERS"]   # endpoints once it is up
            st.kill("db-consumer")              # the supervisor restarts it
    """

    def __init__(self, directory: Path, env: dict | None = None, timeout_s: float = 420,
                 name: str | None = None):
        self.dir = Path(directory)
        self.name = name or self.dir.name
        self.timeout_s = timeout_s
        base = {k: v for k, v in os.environ.items() if k not in STACK_ENV_KEYS}
        self.env: dict[str, str] = {**base, "STACK_DIR": str(self.dir), "STACK_KAFKA_PORT": "0",
                                    "STACK_S3RVER_PORT": "0", "STACK_MONGO_PORT": "0", "STACK_POSTGRES_PORT": "0", "STACK_COUCHDB_PORT": "0",
                                    "STACK_INFERENCE_PORT": "0",
                                    **(env or {})}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "LocalStack":
        """Start and wait until ready; on failure raise with every component's log tail."""
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Endpoints of an earlier start (a restart) must not read as "use external servers".
        launch_env = {k: v for k, v in self.env.items() if k not in STACK_ENV_KEYS}
        if up(self.dir, self.timeout_s, env=launch_env) != 0:
            raise RuntimeError(f"local stack in {self.dir} failed to start:\n{self.logs()}")
        self.env.update(read_env(self.dir / "stack.env"))
        log.info("stack up in %.0f s (%s)", time.monotonic() - t0, self.dir)
        return self

    def stop(self) -> None:
        down(self.dir)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ looking
    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted((self.dir / "logs").glob("*.log")))

    def pid(self, name: str) -> int | None:
        return read_pid(self.dir / "pids" / f"{name}.pid")

    def pids(self) -> dict[str, int]:
        """Component name -> root pid, for every pid file."""
        out = {}
        for pid_file in sorted((self.dir / "pids").glob("*.pid")):
            pid = read_pid(pid_file)
            if pid:
                out[pid_file.stem] = pid
        return out

    def processes(self) -> list[int]:
        """The supervisor, every component and their children (Gunicorn's workers)."""
        roots = [p for p in [supervisor_pid(self.dir), *self.pids().values()] if p]
        return sorted({proc.pid for root in roots for proc in process_tree(root)})

    def joined(self, name: str) -> bool:
        """A consumer has joined its group (it writes this marker)."""
        return (self.dir / "state" / f"{name}.joined").exists()

    def restarted(self, name: str, old_pid: int | None) -> bool:
        pid = self.pid(name)
        return pid is not None and pid != old_pid and pid_alive(pid)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each component's live process tree."""
        out = {}
        for name, root in self.pids().items():
            total = 0.0
            for proc in process_tree(root):
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    def peak_rss(self) -> dict:
        return peak_rss(self.dir)

    # ------------------------------------------------------------ faults
    def send(self, name: str, sig: int = signal.SIGKILL, keep_down: bool = False) -> float:
        """Signal a component's process group (what ``python -m stack kill|pause`` does);
        returns the unix time it was sent."""
        if keep_down:
            hold(self.dir, name)
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} has no pid file")
        t = time.time()
        os.killpg(pid, sig)
        return t

    def pause(self, name: str) -> float:
        return self.send(name, signal.SIGTERM, keep_down=True)

    def resume(self, name: str) -> None:
        release(self.dir, name)


def _peak_rss_mib(proc: psutil.Process) -> float | None:
    """VmHWM, the peak resident set of a process (Linux), in MiB."""
    try:
        with open(f"/proc/{proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss(d: Path) -> dict:
    """Per component of the stack in ``d``: the peak resident set of every process of its
    tree (MiB), the largest and the sum."""
    out = {}
    for pid_file in sorted((d / "pids").glob("*.pid")):
        root = read_pid(pid_file)
        procs = []
        for proc in process_tree(root) if root else []:
            mib = _peak_rss_mib(proc)
            if mib is not None:
                try:
                    name = proc.name()
                except psutil.Error:
                    name = None
                procs.append({"pid": proc.pid, "name": name, "peak_rss_mib": mib})
        out[pid_file.stem] = {"peak_rss_mib": max((x["peak_rss_mib"] for x in procs), default=None),
                              "total_peak_rss_mib": round(sum(x["peak_rss_mib"] for x in procs), 1),
                              "processes": procs}
    return out
