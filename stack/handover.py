"""Replace a running component by a new instance started beside it, so that something
serves at every moment: the inference service's step of a local rolling upgrade.

    python -m stack handover inference       (handover(d, "inference") from code)

A component that supports it (``Component.handover``) is started a second time, from its
checkout (``checkout/<name>``: the upgrade's code), while the running one keeps serving.
Both listen on the same port (Gunicorn's ``reuse_port``: the kernel spreads new
connections over the two), and the new one also on a private port of its own, where the
supervisor asks for its readiness (``/readyz`` on the shared port could be answered by
either).  While the new one loads its model it answers 503, and a client that gets a 503
opens a new connection for its next try (consumers/predict_client.py), which the kernel
may give to the old one.  Once the new one is ready the old one is stopped as any stop
does it (SIGTERM: Gunicorn finishes the requests in flight within its graceful timeout)
and the pid file names the new one.  If the new one exits or is not ready in time, it is
stopped and the old one serves on; the result says why.

Files under the stack directory: ``handover/<name>`` (a request, removed when it is
answered) and ``handover/<name>.json`` (the answer: ok, pids, seconds, the reason).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stack.component import Component, pid_alive

log = logging.getLogger("stack")


@dataclass
class Successor:
    """How to start a second instance of a component beside the running one: its command
    line, and the check that says it (not the old one) is ready."""

    argv: list[str]
    ready: Callable[[], bool]


@dataclass
class _Pending:
    component: Component
    proc: subprocess.Popen
    ready: Callable[[], bool]
    started: float  # time.monotonic()
    runs_from: Path


class Handovers:
    """The supervisor's side: each ``step`` (from its watch loop) starts what was asked,
    swaps in a successor that became ready, stops what it replaced.  It never blocks, so
    the supervisor keeps restarting other components meanwhile."""

    def __init__(self, supervisor):
        self.sup = supervisor
        self.dir = supervisor.dir / "handover"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.iterdir():
            stale.unlink()
        self.pending: dict[str, _Pending] = {}
        self.retiring: list[tuple[Component, subprocess.Popen, float]] = []

    def step(self) -> None:
        now = time.monotonic()
        for c in self.sup.components:
            p = self.pending.get(c.name)
            if p is None:
                if (self.dir / c.name).exists():
                    self._begin(c)
            elif p.proc.poll() is not None:
                self._fail(p, f"the new {c.name} (pid {p.proc.pid}) exited with {p.proc.returncode} while "
                              f"starting; see {self.sup.dir / 'logs' / (c.name + '.log')}")
            elif p.ready():
                self._finish(p)
            elif now > p.started + c.ready_timeout_s:
                self._fail(p, f"the new {c.name} was not ready after {c.ready_timeout_s:.0f} s")
        self._reap()

    def stop_all(self) -> None:
        """The supervisor stops: successors not swapped in yet and what is retiring."""
        for p in list(self.pending.values()):
            self._fail(p, "the stack is stopping")
        deadline = time.monotonic() + max((c.stop_timeout_s for c, _, _ in self.retiring), default=0)
        while self.retiring and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for c, proc, _ in self.retiring:
            _killpg(proc, signal.SIGKILL)
            proc.wait()
        self.retiring.clear()

    # ------------------------------------------------------------ steps
    def _begin(self, c: Component) -> None:
        t0 = time.monotonic()
        if c.handover is None:
            return self._answer(c, ok=False, reason=f"{c.name} cannot be handed over (only a component that "
                                                    f"can run twice on one port: the inference service)")
        if c.proc is None or c.proc.poll() is not None or self.sup.held(c):
            return self._answer(c, ok=False, reason=f"{c.name} is not running")
        successor = c.handover()
        proc, cwd = self.sup.spawn(c, successor.argv, f"starting a new {c.name} beside pid {c.proc.pid}")
        log.info("handover: new %s (pid %d) starting beside pid %d, from %s", c.name, proc.pid, c.proc.pid, cwd)
        self.pending[c.name] = _Pending(c, proc, successor.ready, t0, cwd)

    def _finish(self, p: _Pending) -> None:
        c, old = p.component, p.component.proc
        del self.pending[c.name]
        self.sup.adopt(c, p.proc)
        if old is not None and old.poll() is None:
            _killpg(old, c.stop_signal)
            self.retiring.append((c, old, time.monotonic() + c.stop_timeout_s))
        took = time.monotonic() - p.started
        log.info("handover: %s pid %d serves (ready in %.1f s); stopping pid %s", c.name, p.proc.pid, took,
                 old.pid if old is not None else "-")
        self._answer(c, ok=True, pid=p.proc.pid, old_pid=old.pid if old is not None else None,
                     took_s=round(took, 2), runs_from=str(p.runs_from))

    def _fail(self, p: _Pending, reason: str) -> None:
        c = p.component
        del self.pending[c.name]
        log.error("handover of %s failed: %s; the running one serves on", c.name, reason)
        if p.proc.poll() is None:
            _killpg(p.proc, c.stop_signal)
            self.retiring.append((c, p.proc, time.monotonic() + c.stop_timeout_s))
        self._answer(c, ok=False, reason=reason)

    def _reap(self) -> None:
        now = time.monotonic()
        for item in list(self.retiring):
            c, proc, deadline = item
            if proc.poll() is not None:
                self.retiring.remove(item)
                log.info("handover: old %s (pid %d) stopped", c.name, proc.pid)
            elif now > deadline:
                log.warning("handover: old %s (pid %d) did not stop in %.0f s; killing", c.name, proc.pid,
                            c.stop_timeout_s)
                _killpg(proc, signal.SIGKILL)

    def _answer(self, c: Component, **result) -> None:
        (self.dir / f"{c.name}.json").write_text(json.dumps({"component": c.name, **result}) + "\n")
        (self.dir / c.name).unlink(missing_ok=True)


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------ the asking side

def handover(d: Path, name: str, timeout_s: float = 600) -> dict:
    """Ask the running supervisor of stack directory ``d`` to hand ``name`` over to a new
    instance, and wait for the answer: ``{"ok": ..., "pid", "old_pid", "took_s",
    "runs_from"}`` or ``{"ok": False, "reason": ...}``."""
    from stack.control import supervisor_pid

    if supervisor_pid(d) is None:
        return {"component": name, "ok": False, "reason": f"no stack is running in {d}"}
    requests, answer = d / "handover", d / "handover" / f"{name}.json"
    requests.mkdir(parents=True, exist_ok=True)
    answer.unlink(missing_ok=True)
    (requests / name).write_text(f"{time.time()}\n")
    deadline = time.monotonic() + timeout_s
    while not answer.exists():
        pid = supervisor_pid(d)
        if pid is None or not pid_alive(pid):
            return {"component": name, "ok": False, "reason": "the supervisor stopped before it answered"}
        if time.monotonic() > deadline:
            (requests / name).unlink(missing_ok=True)
            return {"component": name, "ok": False, "reason": f"no answer in {timeout_s:.0f} s"}
        time.sleep(0.2)
    return json.loads(answer.read_text())
