"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from consumers import batching
from tests.fakes import FakeClock


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """A fake clock in place of ``consumers.batching.time``: backoffs and batch waits cost no time."""
    c = FakeClock()
    monkeypatch.setattr(batching, "time", c)
    return c
