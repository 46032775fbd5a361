"""One process the local stack's supervisor keeps running (a server, a consumer), and the
process checks it needs (psutil: a zombie is dead, Gunicorn's workers are children)."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import psutil

from common.lifecycle import Backoff

if TYPE_CHECKING:
    from stack.handover import Successor


def pid_alive(pid: int) -> bool:
    """Running (a zombie child that was not reaped yet counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Gunicorn's workers, say)."""
    try:
        return [c.pid for c in psutil.Process(pid).children() if pid_alive(c.pid)]
    except psutil.Error:
        return []


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 20.0
    # The signal that stops it cleanly (PostgreSQL: SIGINT, its fast shutdown, which does
    # not wait for clients to disconnect as SIGTERM's smart shutdown does).
    stop_signal: int = signal.SIGTERM
    # Run before every start, restarts included (PostgreSQL: create the cluster the first time).
    before_start: Callable[[], None] | None = None
    # How to start a second instance beside the running one and hand over to it once it is
    # ready (stack/handover.py: a Successor); None: it can only be restarted.
    handover: Callable[[], "Successor"] | None = None
    proc: subprocess.Popen | None = None
    restarts: int = 0
    # Why a restart would do harm (a memory-only broker loses every topic, message and
    # committed offset): such a component's death stops the stack, loudly.
    no_restart: str = ""
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    started_at: float = 0.0
    next_restart_at: float = 0.0
