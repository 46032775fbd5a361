"""Helpers shared by test modules (not fixtures: those are in conftest.py).

No test compares a time or a rate with a constant: CI runs on machines of any speed,
loaded or not.  Waits end on a condition; ``HANG_GUARD_S`` only catches a part that
never finishes (set HANG_GUARD_S in the environment to change it).
"""

from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

T = TypeVar("T")
HANG_GUARD_S = float(os.environ.get("HANG_GUARD_S", 600))


def eventually(probe: Callable[[], T], timeout_s: float = HANG_GUARD_S, step_s: float = 0.3) -> T:
    """Call ``probe`` until it returns something truthy and return that; past the hang
    guard, return its last (falsy) answer so the caller's assertion says what is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step_s)
