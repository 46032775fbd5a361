"""Graceful stop on SIGTERM/SIGINT (finish the current batch, commit, close) and the backoff of retries."""

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


def soonest(backoff_s: float, retry_after_s: list[float | None]) -> float:
    """How long to wait before asking again: the backoff's delay, or sooner where every
    answer named when to ask again (HTTP Retry-After; None: it did not).  A service that
    says it is loading is then asked when it says, so a consumer backed off to 10 s while
    the service was down does not sleep through its first seconds of serving."""
    if not retry_after_s or any(s is None for s in retry_after_s):
        return backoff_s
    return min(backoff_s, max(retry_after_s))
