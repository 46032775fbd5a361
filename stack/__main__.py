"""``python -m stack {up,down,clean,status,pause,resume,kill}``: the embedded local stack.

    up       start the supervisor in the background; return when every component is ready
    down     stop everything (consumers first), leaving no process behind; the stores'
             data stays in the stack directory for the next ``up``
    clean    ``down``, then remove the stack directory (the stores' data, logs), saying what
             it removed
    status   one line per component
    pause N  keep component N down (SIGTERM, or --signal KILL) until ``resume N``
    resume N let the supervisor start N again
    kill N   signal N (default SIGKILL); the supervisor restarts it, as systemd would
    handover N
             start a new N beside the running one and stop the old one once the new one
             is ready: the inference service without a moment down (stack/handover.py);
             from another checkout with --from DIR (a local rolling upgrade)
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from common.log import setup_logging
from common.settings import SettingsError, StackSettings, check_replaced, with_flags
from stack.control import clean, down, hold, release, run_from, signal_component, stack_dir, status, up
from stack.handover import handover
from stack.supervisor import Supervisor


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "clean", "status", "supervise", "pause", "resume", "kill",
                                          "handover"])
    p.add_argument("component", nargs="?")
    p.add_argument("--timeout", type=float, default=360, help="seconds to wait for 'up' or 'handover'")
    p.add_argument("--signal", default=None, help="signal for kill/pause (KILL, TERM, STOP ...)")
    p.add_argument("--from", dest="checkout", type=Path, default=None,
                   help="handover: run the new instance from this checkout of the repository")
    args = p.parse_args(argv)
    with_flags(StackSettings, p)  # a bad STACK_* value: usage and the message, status 2
    if args.command in ("up", "supervise"):  # the supervisor hands this environment to every component
        try:
            check_replaced()
        except SettingsError as exc:
            p.error(str(exc))
    d = stack_dir()
    if args.command == "supervise":
        return Supervisor(d).run()
    if args.command == "up":
        return up(d, args.timeout)
    if args.command == "down":
        return down(d)
    if args.command == "clean":
        return clean(d)
    if args.command == "status":
        return status(d)
    if not args.component:
        p.error(f"{args.command} needs a component name")
    if args.command == "resume":
        release(d, args.component)
        print(f"{args.component} released; the supervisor restarts it")
        return 0
    if args.command == "handover":
        if args.checkout is not None:
            run_from(d, args.component, args.checkout)
        result = handover(d, args.component, args.timeout)
        if not result["ok"]:
            print(f"handover of {args.component} failed: {result['reason']}", file=sys.stderr)
            return 1
        print(f"{args.component}: pid {result['pid']} serves from {result['runs_from']} (ready in "
              f"{result['took_s']} s); pid {result['old_pid']} stopping")
        return 0
    if args.command == "pause":
        hold(d, args.component)
        return signal_component(d, args.component, getattr(signal, f"SIG{args.signal or 'TERM'}"))
    return signal_component(d, args.component, getattr(signal, f"SIG{args.signal or 'KILL'}"))


if __name__ == "__main__":
    sys.exit(main())
