"""A run directory through its life (common/rundir.py): made, written per producer, merged,
closed against MongoDB (a stand-in collection here), read back."""

from __future__ import annotations

import csv
import json

import pytest

from analysis.summary import close_run
from common import rundir
from common.rundir import COLUMNS, STAGE_COLUMNS, RunDir, RunFileError


class Store:
    """The two calls closing a run makes of a store reader (common.store), over a dict of documents."""

    def __init__(self, docs: dict[str, dict]):
        self.docs = docs

    def by_ids(self, ids, fields):
        return [{k: v for k, v in self.docs[i].items() if k in fields} | {"image_id": i}
                for i in ids if i in self.docs]

    def count(self, *, producer_ids=None, with_prediction=False):
        return sum(1 for d in self.docs.values() if d.get("producer_id") in producer_ids)


def latency(image_id: str, producer: str, seq: int, sent: float, e2e: float | None) -> dict:
    return {"image_id": image_id, "device_id": "cam1", "producer_id": producer, "seq": seq,
            "sent_at": sent, "result_at": None if e2e is None else sent + e2e / 1000, "e2e_ms": e2e,
            "label": "cat", "prediction": "cat" if e2e is not None else None,
            "model": "resnet50-untrained" if e2e is not None else None}


def two_producers(tmp_path) -> RunDir:
    """A run of two producers (two images each, one without a result), merged."""
    run = RunDir.create(tmp_path / "results" / "run")
    for n, pid in enumerate(("r-p1", "r-p2")):
        files = RunDir(run.add_producer(pid))
        rows = [latency(f"{pid}-{i}", pid, i, 100.0 + n + i, None if (n, i) == (1, 1) else 50.0)
                for i in range(2)]
        files.write_latencies(rows)
        files.write_stages([{"image_id": r["image_id"], "sent_at": r["sent_at"], "result_at": r["result_at"]}
                            for r in rows])
    run.merge_producers(["r-p1", "r-p2", "r-p3"])  # r-p3 never started: skipped
    return run


def test_a_run_is_made_merged_and_read_back(tmp_path):
    run = two_producers(tmp_path)
    assert [p.name for p in run.producer_dirs()] == ["r-p1", "r-p2"]
    assert run.producer_dir("r-p1") == run.path / "producers" / "r-p1"
    header, *lines = run.latencies_csv.read_text().splitlines()
    assert header == ",".join(COLUMNS) and len(lines) == 4
    assert run.stages_csv.read_text().splitlines()[0] == ",".join(STAGE_COLUMNS)
    assert run.sent_anything()
    rows = run.latencies()
    assert [r.image_id for r in rows] == ["r-p1-0", "r-p1-1", "r-p2-0", "r-p2-1"]
    assert rows[3].e2e_ms is None and rows[0].e2e_ms == 50.0
    assert set(run.stages()) == {r.image_id for r in rows}
    assert run.summary() == {}  # not closed yet
    assert not RunDir.create(tmp_path / "empty").sent_anything()


def test_closing_waits_for_mongodb_joins_stored_at_and_writes_the_summary(tmp_path, monkeypatch):
    run = two_producers(tmp_path)
    docs = {f"{pid}-{i}": {"producer_id": pid, "image": b"png", "stored_at": 200.0 + i,
                           **({"prediction": "cat"} if (pid, i) != ("r-p2", 1) else {})}
            for pid in ("r-p1", "r-p2") for i in range(2)}
    docs["stray"] = {"producer_id": "r-p1", "image": b"png", "prediction": "dog"}
    reads = []
    real = rundir.read_latencies
    monkeypatch.setattr(rundir, "read_latencies", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(rundir.time, "sleep", lambda s: None)
    summary = close_run(run, Store(docs), timeout_s=0.0, extra={"producers": 2})
    assert run.latencies()[0].image_id == "r-p1-0"
    assert reads == [run.latencies_csv]  # closing and reading the rows back: one read
    assert json.loads(run.summary_json.read_text()) == summary == run.summary()
    assert (summary["sent"], summary["results"], summary["stored"], summary["stored_with_prediction"],
            summary["lost"], summary["duplicate_documents"], summary["producers"]) == (4, 3, 4, 3, 1, 1, 2)
    assert summary["model"] == "resnet50-untrained" and summary["untrained_model"] is True
    assert set(summary["e2e_ms"]) == {"p50", "p90", "p95", "p99", "max"}
    with open(run.stages_csv, newline="") as fh:
        stored = {r["image_id"]: r["stored_at"] for r in csv.DictReader(fh)}
    assert stored == {"r-p1-0": "200.0", "r-p1-1": "201.0", "r-p2-0": "200.0", "r-p2-1": "201.0"}
    assert run.stages()["r-p1-1"]["stored_at"] == 201.0


def test_closing_without_mongodb_leaves_its_fields_empty(tmp_path):
    summary = close_run(two_producers(tmp_path).path, None)
    assert summary["sent"] == 4 and summary["stored"] is summary["lost"] is summary["duplicate_documents"] is None


def test_a_merge_forgets_the_rows_read_before_it(tmp_path):
    run = two_producers(tmp_path)
    assert len(run.latencies()) == 4
    run.merge_producers(["r-p1"])
    assert len(run.latencies()) == 2


@pytest.mark.parametrize("text, words", [("{not json", "invalid JSON"), ("[1, 2]", "expected a JSON object")])
def test_an_unusable_summary_names_its_file(tmp_path, text, words):
    run = RunDir.create(tmp_path / "r")
    run.summary_json.write_text(text)
    with pytest.raises(RunFileError, match=words) as err:
        run.summary()
    assert str(run.summary_json) in str(err.value)
