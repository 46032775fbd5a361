"""A producer's bound on the images it holds unacknowledged (Kafka's ``buffer.memory``,
which kafka-python 3 does not have): bytes handed to the Kafka client and neither
acknowledged by the broker nor failed yet.  While the broker is away the images wait in
it; an image that finds no room within the wait is the caller's to count as failed."""

from __future__ import annotations

import threading


class SendBuffer:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def reserve(self, size: int, timeout_s: float) -> bool:
        """Take ``size`` bytes, waiting up to ``timeout_s`` for room; False if there was none.
        An image larger than the whole buffer still goes when the buffer is empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + size <= self.capacity,
                                       timeout_s):
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        """Give back what an image took, once the broker acknowledged it or it failed."""
        with self._cond:
            self.used = max(0, self.used - size)
            self._cond.notify_all()
