"""Helpers shared by test modules (not fixtures: those are in conftest.py).

No test compares a time or a rate with a constant: CI runs on machines of any speed,
loaded or not.  Waits end on a condition; ``HANG_GUARD_S`` only catches a part that
never finishes (set HANG_GUARD_S in the environment to change it).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")
HANG_GUARD_S = float(os.environ.get("HANG_GUARD_S", 600))
ROOT = Path(__file__).resolve().parent.parent


def eventually(probe: Callable[[], T], timeout_s: float = HANG_GUARD_S, step_s: float = 0.3) -> T:
    """Call ``probe`` until it returns something truthy and return that; past the hang
    guard, return its last (falsy) answer so the caller's assertion says what is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step_s)


class SkippedSleep:
    """A stand-in for the ``time`` module of a module under test (monkeypatch it in): ``sleep``
    returns at once and records what it was asked for, and ``perf_counter`` moves on by the
    time skipped, so a duration the module measures around its sleep includes it exactly,
    on a machine of any speed and without the test waiting."""

    def __init__(self):
        self.slept: list[float] = []
        self._skipped_s = 0.0

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._skipped_s += seconds

    def perf_counter(self) -> float:
        return time.perf_counter() + self._skipped_s

    def __getattr__(self, name: str):
        return getattr(time, name)


def make_cifar_archive(path: Path, per_batch: int = 20) -> Path:
    """A tiny archive in the official CIFAR-10 'python version' layout (random pixels)."""
    rng = np.random.default_rng(1)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]
    members = {"batches.meta": {b"label_names": names}}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members[name] = {b"batch_label": name.encode(),
                         b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
                         b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def mongo_connect(mongo):
    """A plain pymongo client for a MongoSettings: the tests read MongoDB themselves, never
    through the store reader they are checking (common.store)."""
    from pymongo import MongoClient

    from common.settings import secret

    return MongoClient(secret(mongo.mongo_uri), serverSelectionTimeoutMS=mongo.mongo_timeout_ms, retryWrites=False)


def mongo_images(client, mongo):
    """The images collection of ``client`` that a MongoSettings names."""
    return client[mongo.mongo_database][mongo.mongo_collection]


class Prometheus:
    """The HTTP query API of a real Prometheus."""

    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict]:
        import requests

        body = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None
