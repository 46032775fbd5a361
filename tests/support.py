"""Helpers shared by test modules (not fixtures: those are in conftest.py).

No test compares a time or a rate with a constant: CI runs on machines of any speed,
loaded or not.  Waits end on a condition; ``HANG_GUARD_S`` only catches a part that
never finishes (set HANG_GUARD_S in the environment to change it).
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from common.settings import SuiteSettings

T = TypeVar("T")
HANG_GUARD_S = SuiteSettings().hang_guard_s
ROOT = Path(__file__).resolve().parent.parent


def requirement_names(name: str) -> set[str]:
    """The packages a requirements file of the project installs (``name`` relative to the
    root; its ``-r`` includes followed; every pin whatever its marker), by normalized name."""
    from packaging.requirements import Requirement

    path, out = ROOT / name, set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out |= requirement_names(str(path.parent.relative_to(ROOT) / line[3:].strip()))
        elif line and not line.startswith("-"):
            out.add(Requirement(line).name.lower().replace("_", "-"))
    return out


def eventually(probe: Callable[[], T], timeout_s: float = HANG_GUARD_S, step_s: float = 0.3) -> T:
    """Call ``probe`` until it returns something truthy and return that; past the hang
    guard, return its last (falsy) answer so the caller's assertion says what is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step_s)


def fill_disk(directory: Path, name: str = "filler") -> Path:
    """A file in ``directory`` taking every byte its filesystem has left: written until
    ENOSPC, so it is full even while a server writes there too.  Delete it to free the space."""
    filler = Path(directory) / name
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != 28:  # ENOSPC
                    raise
    return filler


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


def write_experiment(out: Path, trials: dict[int, list[list[float | None]]], *, interval_s: float = 0.05,
                     model: str = "resnet50-untrained-32", rate: float = 10.0, record: dict | None = None) -> Path:
    """An experiment directory as ``python -m experiments.experiment`` writes one, with known
    latencies: ``trials[n][k]`` are the latencies (ms, None: no result) of trial k + 1 of the
    configuration of n producers, in send order (image i sent by producer i % n, one every
    ``interval_s``); the trials run interleaved, round by round.  Returns ``out``."""
    from analysis.summary import pool, summarize
    from common.rundir import RunDir
    from common.trials import Pool

    classes = ("airplane", "automobile", "bird", "cat")
    rounds = max(len(t) for t in trials.values())
    t0, order, runs = 1_700_000_000.0, 0, []
    records: dict[int, list] = {n: [] for n in trials}
    per_producer = {n: max(len(t) for t in trials[n]) // n for n in trials}
    summaries: dict[int, list] = {n: [] for n in trials}
    for k in range(rounds):
        for n in sorted(trials):
            if k >= len(trials[n]):
                continue
            order += 1
            name = f"{n}-producer{'s' if n > 1 else ''}"
            start = t0 + order * 100
            rows = [{"image_id": f"{name}-t{k + 1}-{i}", "device_id": f"cam-{i % 3}",
                     "producer_id": f"{name}-t{k + 1}-p{i % n + 1}", "seq": i, "sent_at": start + i * interval_s,
                     "result_at": None if e2e is None else start + i * interval_s + e2e / 1000, "e2e_ms": e2e,
                     "label": classes[i % 4], "prediction": classes[i % 4] if i % 5 else classes[(i + 1) % 4],
                     "model": model} for i, e2e in enumerate(trials[n][k])]
            run = RunDir.create(out / name / f"trial-{k + 1}")
            run.write_latencies(rows)
            run.write_stages([{"image_id": r["image_id"], "sent_at": r["sent_at"], "result_at": r["result_at"],
                               "received_at": r["result_at"] and r["sent_at"] + 0.4 * (r["result_at"] - r["sent_at"]),
                               "stored_at": r["result_at"]} for r in rows])
            summary = summarize(run.latencies(), None, extra={"producers": n, "rate": rate,
                                                              "images_per_producer": per_producer[n],
                                                              "offered_img_s": n * rate})
            summary.update(stored=len(rows), stored_with_prediction=len(rows), lost=0, duplicate_documents=0)
            run.write_summary(summary)
            records[n].append({"trial": k + 1, "round": k + 1, "order": order,
                               "producer_ids": [f"{name}-t{k + 1}-p{i + 1}" for i in range(n)],
                               "settle": {"settled": True, "settle_s": 1.5, "lag": 0}})
            summaries[n].append(summary)
    for n in sorted(trials):
        name = f"{n}-producer{'s' if n > 1 else ''}"
        p = Pool(out / name)
        p.write(records[n])
        pooled = pool(summaries[n], p.run.latencies())
        p.run.write_summary(pooled)
        runs.append({"producers": n, "dir": name, "summary": pooled,
                     "trials": [{**r, "dir": f"{name}/trial-{r['trial']}", "summary": s}
                                for r, s in zip(records[n], summaries[n])]})
    base = {"started_at": t0, "finished_at": t0 + order * 100 + 60, "target": "local-stack",
            "settings": {"producers": sorted(trials), "images_per_producer": None, "rate_per_producer": rate,
                         "rate_from": "given", "repeat": rounds, "order": "interleaved"},
            "load_average_start": [1.0, 1.5, 2.0], "load_average_end": [2.0, 1.8, 1.9],
            "model": {"id": model, "weights_source": "random", "weights_sha256": None, "untrained": True},
            "versions": {"numpy": np.__version__}, "host": {"hostname": "test", "cpu_count": 2, "memory_gib": 4.0},
            "store": {"kind": "mongodb", "where": "127.0.0.1:27017"}, "dead_letters": 0,
            "capacity": None, "knee": None, "settle_baseline": {"lag": 0, "idle_cpu_cores": 0.1}, "runs": runs}
    base.update(record or {})
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(base, indent=2) + "\n")
    return out


def s3_headers(storage, headers: dict | None = None) -> dict:
    """The headers s3rver/serve.js and s3rver accept from a client: an Authorization naming
    the stack's key id (s3rver does not check signature-V4 signatures)."""
    key_id, _secret = storage.keys()
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{now[:8]}/auto/s3/aws4_request, "
                             f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
            "x-amz-date": now, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", **(headers or {})}


def run_s3rver(tmp_path: Path, data: Path):
    """s3rver/serve.js serving ``data`` (its keys and log in ``tmp_path``), as the stack runs it:
    a context manager giving ``(storage, log_path)``; the server is stopped after."""
    import contextlib
    import subprocess

    from stack.broker import S3RVER_DIR, BrokerStorage
    from stack.ports import free_port
    from tests.binaries import required_binary, unavailable

    required_binary("node", "nodejs")
    if not (S3RVER_DIR / "node_modules" / "s3rver" / "package.json").is_file():
        unavailable("s3rver is not installed (make s3rver)")

    @contextlib.contextmanager
    def running():
        storage = BrokerStorage(tmp_path, free_port())
        component = storage.component()
        argv = [*component.argv[:2], str(data), *component.argv[3:]]
        log_path = tmp_path / "s3rver.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + HANG_GUARD_S
            while not storage.ready():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "s3rver never answered"
                time.sleep(0.1)
            yield storage, log_path
        finally:
            proc.terminate()
            proc.wait(timeout=HANG_GUARD_S)

    return running()
