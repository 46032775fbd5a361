"""Run directories: their format and every read and write of them, here and nowhere else.

A run directory is what one measured run leaves behind, wherever it was made (the
demo, the experiment, the benchmark, the fault suite, a producer VM)::

    <run>/latencies.csv         one row per image sent (COLUMNS); required
    <run>/stages.csv            one row per image: the pipeline's timestamps (STAGE_COLUMNS)
    <run>/summary.json          written when the run is closed against MongoDB
    <run>/producers/<id>/       per-producer files, merged into the two CSVs above

``RunDir`` is one of them through its life: ``RunDir.create`` makes it and
``add_producer`` a producer's own directory; each producer writes its CSVs there
(``write_latencies``, ``write_stages``); ``merge_producers`` joins them into the run's;
``close`` waits until MongoDB holds every image, joins MongoDB's ``stored_at`` into
stages.csv and writes summary.json; ``latencies``, ``stages`` and ``summary`` read them
back, latencies.csv once per ``RunDir`` (closing and drawing a run share the rows).
What summary.json says is the analysis's (``analysis.summary.summarize``, passed to
``close``): this module owns the files, not the figures.  Timestamps are unix seconds
(floats).  A configuration run several times (``make experiment REPEAT=K``) is a run
directory pooling one run directory per trial: ``common.trials``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.store import StoreError, StoreReader
from common.wire import (DEVICE_ID, E2E_MS, IMAGE, IMAGE_ID, LABEL, LATENCY_COLUMNS, MODEL, OPTIONAL_STAGE_COLUMNS,
                         PREDICTION, PRODUCER_ID, RESULT_AT, SENT_AT, SEQ, STAGE_COLUMNS, STORED_AT)

log = logging.getLogger(__name__)

COLUMNS = LATENCY_COLUMNS  # latencies.csv; stages.csv has STAGE_COLUMNS (+ OPTIONAL_STAGE_COLUMNS when read)
LATENCIES, STAGES, SUMMARY, PRODUCERS = "latencies.csv", "stages.csv", "summary.json", "producers"


class RunFileError(ValueError):
    """A run file that cannot be read; the message names the file and line."""


LatencyFileError = RunFileError  # the name the analysis reports it under


@dataclass(frozen=True)
class LatencyRow:
    image_id: str
    device_id: str
    producer_id: str
    seq: int
    sent_at: float
    result_at: float | None
    e2e_ms: float | None
    label: str | None
    prediction: str | None
    model: str | None
    line: int = field(default=0, compare=False)  # its line in latencies.csv (0: not read from one)


def _opt(value: str) -> str | None:
    return value if value != "" else None


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """``columns`` of each row (None and missing keys as empty cells; other keys ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def write_latencies(path: Path, rows: list[dict]) -> None:
    _write_csv(path, COLUMNS, rows)


def read_latencies(path: Path) -> list[LatencyRow]:
    """Read and validate a latencies file; malformed rows raise with file and line."""
    path = Path(path)
    if not path.is_file():
        raise LatencyFileError(f"{path}: no such file")
    rows: list[LatencyRow] = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise LatencyFileError(f"{path}:1: empty file (expected header {','.join(COLUMNS)})")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise LatencyFileError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        index = {name: header.index(name) for name in COLUMNS}
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise LatencyFileError(
                    f"{path}:{line_no}: expected {len(header)} fields, found {len(fields)}")
            get = {name: fields[i] for name, i in index.items()}
            try:
                sent_at = float(get[SENT_AT])
                result_at = float(get[RESULT_AT]) if get[RESULT_AT] else None
                e2e_ms = float(get[E2E_MS]) if get[E2E_MS] else None
                seq = int(get[SEQ])
            except ValueError as exc:
                raise LatencyFileError(f"{path}:{line_no}: {exc}") from None
            if not math.isfinite(sent_at) or (e2e_ms is not None and
                                              (not math.isfinite(e2e_ms) or e2e_ms < 0)):
                raise LatencyFileError(f"{path}:{line_no}: timestamps must be finite, e2e_ms >= 0")
            if not get[IMAGE_ID]:
                raise LatencyFileError(f"{path}:{line_no}: empty image_id")
            rows.append(LatencyRow(get[IMAGE_ID], get[DEVICE_ID], get[PRODUCER_ID], seq,
                                   sent_at, result_at, e2e_ms, _opt(get[LABEL]),
                                   _opt(get[PREDICTION]), _opt(get[MODEL]), line_no))
    return rows


def write_stages(path: Path, rows: list[dict]) -> None:
    _write_csv(path, STAGE_COLUMNS, rows)


def _float_or_none(text: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise RunFileError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise RunFileError(f"{where}: not a finite number: {text!r}")
    return value


def read_stages(path: Path) -> dict[str, dict[str, float]]:
    """stages.csv -> image id -> {column: unix seconds} (empty cells left out); {} if absent."""
    if not path.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return {}
        if IMAGE_ID not in header:
            raise RunFileError(f"{path}:1: header lacks column image_id")
        known = [c for c in header if c != IMAGE_ID and (c in STAGE_COLUMNS or c in OPTIONAL_STAGE_COLUMNS)]
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise RunFileError(f"{path}:{line_no}: expected {len(header)} fields, found {len(fields)}")
            record = dict(zip(header, fields))
            times = {}
            for col in known:
                value = _float_or_none(record[col], f"{path}:{line_no}: column {col}")
                if value is not None:
                    times[col] = value
            out[record[IMAGE_ID]] = times
    return out


def merge_csv(parts: list[Path], out: Path) -> None:
    """Concatenate per-producer CSV files of one kind (same header) into one."""
    header_written = False
    with open(out, "w", newline="") as dst:
        for part in parts:
            if not part.exists():
                continue
            with open(part, newline="") as src:
                lines = src.readlines()
            if not lines:
                continue
            if not header_written:
                dst.write(lines[0])
                header_written = True
            dst.writelines(lines[1:])


def read_json(path: Path):
    """A run file's JSON value; RunFileError naming the file when it is absent or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RunFileError(f"{path}: invalid JSON: {exc}") from None


def read_summary(path: Path) -> dict:
    """summary.json -> its object; {} if absent."""
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: expected a JSON object")
    return data


def _add_stored_at(path: Path, docs: dict[str, dict]) -> None:
    """Fill stages.csv's stored_at column from MongoDB documents (image id -> document)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    for row in rows:
        doc = docs.get(row[IMAGE_ID])
        if doc and doc.get(STORED_AT):
            row[STORED_AT] = doc[STORED_AT]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def wait_stored(store: StoreReader, ids: list[str], timeout_s: float = 60.0, progress=None) -> dict[str, dict]:
    """Poll the store until every id is stored with a prediction (or the timeout); returns
    image id -> document (``image_id``, ``prediction``, ``stored_at``, ``image``) of those found.
    ``progress(stored, complete)`` is called after each poll.  A read that fails (the store
    restarting, or too slow on a loaded host) is tried again until the timeout, then raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            docs = {d[IMAGE_ID]: d for d in store.by_ids(ids, (PREDICTION, STORED_AT, IMAGE))}
        except StoreError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("reading the stored images failed (%s); trying again", exc)
            time.sleep(1.0)
            continue
        complete = sum(1 for d in docs.values() if d.get(PREDICTION) and d.get(IMAGE))
        if progress:
            progress(len(docs), complete)
        if complete == len(ids) or time.monotonic() > deadline:
            return docs
        time.sleep(0.5)


# summarize(rows, docs, producer_docs=...) -> summary.json's object: the rows of
# latencies.csv, MongoDB's documents of them (None: not closed against MongoDB) and the
# number of documents of the run's producers (None likewise).
Summarize = Callable[..., dict]


class RunDir:
    """One run directory: where its files are, writing them, and reading them back.

    ``latencies()`` reads latencies.csv once and keeps the rows (``merge_producers``,
    which rewrites the file, forgets them); ``stages()`` and ``summary()`` read their
    file at each call, as ``close`` rewrites both."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._rows: list[LatencyRow] | None = None

    @classmethod
    def create(cls, path: Path | str) -> RunDir:
        """The run directory at ``path``, made (with its parents) if it is not there."""
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def latencies_csv(self) -> Path:
        return self.path / LATENCIES

    @property
    def stages_csv(self) -> Path:
        return self.path / STAGES

    @property
    def summary_json(self) -> Path:
        return self.path / SUMMARY

    # ------------------------------------------------------------ producers

    def producer_dir(self, producer_id: str) -> Path:
        """``producers/<id>/``: one producer's CSVs (merged later), its log and progress."""
        return self.path / PRODUCERS / producer_id

    def add_producer(self, producer_id: str) -> Path:
        """``producer_dir``, made."""
        out = self.producer_dir(producer_id)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def producer_dirs(self) -> list[Path]:
        """Every producer's directory, sorted by id."""
        root = self.path / PRODUCERS
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def merge_producers(self, producer_ids: list[str]) -> None:
        """latencies.csv and stages.csv from these producers' own (those that wrote one)."""
        parts = [self.producer_dir(pid) for pid in producer_ids]
        for name in (LATENCIES, STAGES):
            merge_csv([p / name for p in parts], self.path / name)
        self._rows = None

    # ------------------------------------------------------------ writing

    def write_latencies(self, rows: list[dict]) -> None:
        write_latencies(self.latencies_csv, rows)
        self._rows = None

    def write_stages(self, rows: list[dict]) -> None:
        write_stages(self.stages_csv, rows)

    def write_summary(self, summary: dict) -> None:
        self.summary_json.write_text(json.dumps(summary, indent=2) + "\n")

    def close(self, store: StoreReader | None, summarize: Summarize, *, timeout_s: float = 60.0,
              progress=None) -> dict:
        """Close the run: wait until the store holds every image sent (``wait_stored``; no
        waiting when ``store`` is None), fill stages.csv's ``stored_at`` from it,
        write summary.json from ``summarize``; returns the summary."""
        rows = self.latencies()
        docs = producer_docs = None
        if store is not None:
            docs = wait_stored(store, [r.image_id for r in rows], timeout_s, progress)
            producer_docs = store.count(producer_ids=sorted({r.producer_id for r in rows}))
            _add_stored_at(self.stages_csv, docs)
        summary = summarize(rows, docs, producer_docs=producer_docs)
        self.write_summary(summary)
        return summary

    # ------------------------------------------------------------ reading

    def sent_anything(self) -> bool:
        """Whether latencies.csv holds anything (a run whose producers all failed to
        start leaves an empty file)."""
        return self.latencies_csv.is_file() and self.latencies_csv.stat().st_size > 0

    def latencies(self) -> list[LatencyRow]:
        """latencies.csv's rows (read_latencies), read on the first call only."""
        if self._rows is None:
            self._rows = read_latencies(self.latencies_csv)
        return self._rows

    def stages(self) -> dict[str, dict[str, float]]:
        return read_stages(self.stages_csv)

    def summary(self) -> dict:
        return read_summary(self.summary_json)
