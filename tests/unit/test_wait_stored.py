"""Closing a run waits for the store (common/rundir.py wait_stored): a read that fails is
tried again until the timeout, then raised."""

import pytest

from common import rundir
from common.store import StoreError
from common.wire import IMAGE, IMAGE_ID, PREDICTION


class FlakyReader:
    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def by_ids(self, ids, fields):
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError("MongoDB: timed out")
        return [{IMAGE_ID: i, PREDICTION: {"label": "cat"}, IMAGE: b"x"} for i in ids]


def test_a_failed_read_is_tried_again(monkeypatch):
    monkeypatch.setattr(rundir.time, "sleep", lambda s: None)
    reader = FlakyReader(failures=2)
    docs = rundir.wait_stored(reader, ["a", "b"], timeout_s=60)
    assert set(docs) == {"a", "b"} and reader.calls == 3


def test_a_read_still_failing_at_the_timeout_is_raised(monkeypatch):
    monkeypatch.setattr(rundir.time, "sleep", lambda s: None)
    with pytest.raises(StoreError):
        rundir.wait_stored(FlakyReader(failures=10**9), ["a"], timeout_s=0)
