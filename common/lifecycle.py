"""Graceful stop on SIGTERM/SIGINT: finish the current batch, commit, close."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def stop_event() -> threading.Event:
    event = threading.Event()

    def handle(signum, _frame):
        log.info("received %s, stopping after the current batch", signal.Signals(signum).name)
        event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return event


class Backoff:
    """Exponential backoff for retrying a dependency that is down (never gives up)."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum, self.current = initial, maximum, initial

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial
