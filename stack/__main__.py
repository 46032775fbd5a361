"""``python -m stack {up,down,status,pause,resume,kill}``: the embedded local stack.

    up       start the supervisor in the background; return when every component is ready
    down     stop everything (consumers first), leaving no process behind
    status   one line per component
    pause N  keep component N down (SIGTERM, or --signal KILL) until ``resume N``
    resume N let the supervisor start N again
    kill N   signal N (default SIGKILL); the supervisor restarts it, as systemd would
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.log import setup_logging
from stack.supervisor import ROOT, Supervisor, pid_alive, stack_dir

log = logging.getLogger("stack")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def supervisor_pid(d: Path) -> int | None:
    pid = read_pid(d / "supervisor.pid")
    return pid if pid and pid_alive(pid) else None


def up(d: Path, timeout_s: float) -> int:
    if supervisor_pid(d) and (d / "ready").exists():
        print(f"stack already up ({d / 'stack.env'})")
        return 0
    if supervisor_pid(d):
        print("stack is starting (supervisor running); waiting")
    else:
        for name in ("failed", "ready"):
            (d / name).unlink(missing_ok=True)
        (d / "logs").mkdir(parents=True, exist_ok=True)
        with open(d / "logs" / "supervisor.log", "ab") as logfile:
            subprocess.Popen([sys.executable, "-m", "stack", "supervise"], cwd=ROOT,
                             env={**os.environ, "STACK_DIR": str(d)}, stdout=logfile,
                             stderr=logfile, stdin=subprocess.DEVNULL, start_new_session=True)
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
            print("  " + (d / "stack.env").read_text().strip().replace("\n", "\n  "))
            return 0
        # The supervisor writes its pid file within a second of starting.
        vanished = time.monotonic() > started + 5 and not supervisor_pid(d)
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
    pid = supervisor_pid(d)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    # Safety net: anything a crashed supervisor left behind.
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


def status(d: Path) -> int:
    sup = supervisor_pid(d)
    print(f"supervisor: {'running (pid %d)' % sup if sup else 'not running'}"
          f"{', ready' if (d / 'ready').exists() else ''}")
    for pid_file in sorted((d / "pids").glob("*.pid")) if (d / "pids").is_dir() else []:
        pid = read_pid(pid_file)
        held = " (held down)" if (d / "hold" / pid_file.stem).exists() else ""
        print(f"  {pid_file.stem:20} pid {pid}: {'alive' if pid and pid_alive(pid) else 'dead'}{held}")
    if (d / "stack.env").exists():
        print((d / "stack.env").read_text().strip())
    return 0 if sup else 1


def signal_component(d: Path, name: str, sig: int) -> int:
    pid = read_pid(d / "pids" / f"{name}.pid")
    if not pid or not pid_alive(pid):
        print(f"{name} is not running", file=sys.stderr)
        return 1
    os.killpg(pid, sig)
    print(f"sent {signal.Signals(sig).name} to {name} (pid {pid})")
    return 0


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "supervise", "pause", "resume", "kill"])
    p.add_argument("component", nargs="?")
    p.add_argument("--timeout", type=float, default=360, help="seconds to wait for 'up'")
    p.add_argument("--signal", default=None, help="signal for kill/pause (KILL, TERM, STOP ...)")
    args = p.parse_args(argv)
    d = stack_dir()
    if args.command == "supervise":
        return Supervisor(d).run()
    if args.command == "up":
        return up(d, args.timeout)
    if args.command == "down":
        return down(d)
    if args.command == "status":
        return status(d)
    if not args.component:
        p.error(f"{args.command} needs a component name")
    if args.command == "resume":
        (d / "hold" / args.component).unlink(missing_ok=True)
        print(f"{args.component} released; the supervisor restarts it")
        return 0
    if args.command == "pause":
        (d / "hold").mkdir(parents=True, exist_ok=True)
        (d / "hold" / args.component).touch()
        return signal_component(d, args.component, getattr(signal, f"SIG{args.signal or 'TERM'}"))
    return signal_component(d, args.component, getattr(signal, f"SIG{args.signal or 'KILL'}"))


if __name__ == "__main__":
    sys.exit(main())
