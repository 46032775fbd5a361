"""Loading runs: a run directory (``latencies.csv`` + optional ``summary.json`` and
``stages.csv``, read through ``common.rundir.RunDir``) or a pseudo-run read straight
from the store (MongoDB, PostgreSQL or CouchDB, through ``common.store``).

Only ``latencies.csv`` is required; everything else adds what it can.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.rundir import LatencyFileError, LatencyRow, RunDir, RunFileError, read_json
from common.trials import Pool, complete_rows
from common.settings import MongoSettings
from common.store import StoreError, StoreReader, open_reader
from common.wire import (DEVICE_ID, IMAGE_ID, INFERRED_AT, LABEL, MODEL, PREDICTION, PREDICTION_STORED_AT,
                         PRODUCER_ID, PUBLISHED_AT, RECEIVED_AT, RESULT_AT, SENT_AT, SEQ, STORED_AT, TIMESTAMPS)

# (label, start timestamp, end timestamp).  The first four are consecutive
# segments of the result path (they add up to e2e for one image); the last two
# run in parallel with it (the storage consumer's view).
STAGES = (
    ("producer → inference consumer", SENT_AT, RECEIVED_AT),
    ("inference (received → inferred)", RECEIVED_AT, INFERRED_AT),
    ("publish result (inferred → published)", INFERRED_AT, PUBLISHED_AT),
    ("result → producer (published → received)", PUBLISHED_AT, RESULT_AT),
    ("image → stored", SENT_AT, STORED_AT),
    ("image → prediction stored", SENT_AT, PREDICTION_STORED_AT),
)
RESULT_PATH = STAGES[:4]

MONGO_DATABASE = "iot"
MONGO_COLLECTION = "images"
_STORE_FIELDS = (PRODUCER_ID, DEVICE_ID, SEQ, LABEL, PREDICTION, MODEL) + TIMESTAMPS


class AnalysisInputError(ValueError):
    """MongoDB is unusable as an input (a run directory's files raise RunFileError)."""


@dataclass
class Run:
    """One run to analyse.

    ``rows`` are the latencies.csv rows (for a MongoDB pseudo-run they are built
    from the documents, with ``e2e_ms`` = stored_at - sent_at).  ``stages`` maps
    image id -> {timestamp name: unix seconds} for whatever stage data exists.
    """

    name: str
    rows: list[LatencyRow]
    summary: dict = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    path: Path | None = None
    source: str = "latencies.csv"
    # Per trial (one for a plain run): its rows in send order, and its throughput (img/s).
    trial_rows: list[list[LatencyRow]] = field(default_factory=list)
    trial_throughputs: list[float | None] = field(default_factory=list)
    trial_numbers: list[int] = field(default_factory=list)  # the rounds they ran in (pooled views)

    @property
    def latencies_ms(self) -> list[float]:
        return [r.e2e_ms for r in self.rows if r.e2e_ms is not None]

    def trials(self) -> list[list[float]]:
        """Each trial's end-to-end latencies in send order (what the intervals resample)."""
        trials = self.trial_rows or [self.rows]
        return [[r.e2e_ms for r in sorted(rows, key=lambda r: r.sent_at) if r.e2e_ms is not None]
                for rows in trials]

    @property
    def producers(self) -> int | None:
        value = self.summary.get("producers")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return int(value)

    @property
    def label(self) -> str:
        """Legend label: "N producers" when known, else the run name."""
        n = self.producers
        if n is None:
            return self.name
        return f"{n} producer" if n == 1 else f"{n} producers"

    @property
    def model(self) -> str | None:
        if isinstance(self.summary.get("model"), str):
            return self.summary["model"]
        for r in self.rows:
            if r.model:
                return r.model
        return None

    @property
    def untrained(self) -> bool:
        if self.summary.get("untrained_model") is True:
            return True
        models = {r.model for r in self.rows if r.model}
        if isinstance(self.summary.get("model"), str):
            models.add(self.summary["model"])
        return any("untrained" in m.lower() for m in models)

    def throughput(self) -> float | None:
        """Images/s: summary.json's ``throughput_img_s`` (a pooled view's: the mean of its
        trials'), else ``rows_throughput`` of the rows."""
        value = _num(self.summary.get("throughput_img_s"))
        return value if value is not None else rows_throughput(self.rows)

    def stage_durations_ms(self) -> dict[str, list[float]]:
        """Stage label -> per-image durations (ms), only for stages with data."""
        out: dict[str, list[float]] = {}
        for label, start, end in STAGES:
            values = [(t[end] - t[start]) * 1000 for t in self.stages.values()
                      if t.get(start) is not None and t.get(end) is not None]
            if values:
                out[label] = values
        return out


def rows_throughput(rows: list[LatencyRow]) -> float | None:
    """Results / (last result - first send), images/s (None without results)."""
    done = [r for r in rows if r.e2e_ms is not None]
    if not done:
        return None
    first_sent = min(r.sent_at for r in rows)
    ends = [r.result_at if r.result_at is not None else r.sent_at + r.e2e_ms / 1000 for r in done]
    span = max(ends) - first_sent
    return len(done) / span if span > 0 else None


# ------------------------------------------------------------------ run directories

def _stages_from_rows(rows: list[LatencyRow]) -> dict[str, dict[str, float]]:
    return {r.image_id: {SENT_AT: r.sent_at, RESULT_AT: r.result_at}
            for r in rows if r.result_at is not None}


def load_run(path: Path, name: str | None = None) -> Run:
    """Load a run directory (or a path to its latencies.csv); a configuration's pooled
    view (common.trials) with its trials told apart."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not run_dir.exists():
        raise LatencyFileError(f"{run_dir}: no such run directory")
    files = RunDir(run_dir)
    run = Run(name=name or run_dir.resolve().name, rows=[], summary=files.summary(), stages=files.stages(),
              path=run_dir)
    if Pool.holds_trials(run_dir):
        trials = Pool(run_dir).trial_rows()
        for trial, rows in trials:
            if len(trials) > 1 and not any(r.e2e_ms is not None for r in rows):
                raise RunFileError(f"{trial.run.latencies_csv}: trial {trial.number} has no end-to-end latency "
                                   "(no result came back): its configuration has no honest interval")
            run.rows.extend(rows)
            run.trial_rows.append(rows)
            run.trial_numbers.append(trial.number)
            rate = _num(trial.run.summary().get("throughput_img_s"))
            run.trial_throughputs.append(rate if rate is not None else rows_throughput(rows))
    else:
        run.rows = complete_rows(files)
        run.trial_rows, run.trial_throughputs = [run.rows], [run.throughput()]
    return run


EXPERIMENT = "experiment.json"


def read_experiment(path: Path) -> dict:
    """An experiment directory's experiment.json (python -m experiments.experiment)."""
    where = Path(path) / EXPERIMENT
    data = read_json(where)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise RunFileError(f"{where}: expected an object with a list \"runs\"")
    return data


def expand_experiments(paths: list[Path]) -> list[Path]:
    """Each path as given, but an experiment directory (experiment.json, no latencies.csv of
    its own) as its configurations' directories, in the order it lists them."""
    out = []
    for path in paths:
        if (path / EXPERIMENT).is_file() and not (path / "latencies.csv").exists():
            data = read_experiment(path)
            dirs = [r.get("dir") for r in data["runs"] if isinstance(r, dict)]
            if not dirs or not all(isinstance(d, str) and d for d in dirs):
                raise RunFileError(f"{path / EXPERIMENT}: no configuration directories in \"runs\"")
            out.extend(path / d for d in dirs)
        else:
            out.append(path)
    return out


def experiment_of(runs: list[Run]) -> dict | None:
    """experiment.json of the experiment these runs are the configurations of (their common
    parent directory's), or None."""
    parents = {run.path.resolve().parent for run in runs if run.path is not None}
    if len(parents) != 1 or any(run.path is None for run in runs):
        return None
    parent = parents.pop()
    return read_experiment(parent) if (parent / EXPERIMENT).is_file() else None


def unique_names(paths: list[Path]) -> list[str]:
    """Run names: the directory name, prefixed by parents where two runs would clash."""
    dirs = [(p.parent if p.is_file() else p).resolve() for p in paths]
    names = [d.name for d in dirs]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        names = ["/".join(d.parts[-depth:]) for d in dirs]
    return names


# ------------------------------------------------------------------ the store

def mongo_reader(uri: str, database: str = MONGO_DATABASE, collection: str = MONGO_COLLECTION,
                 timeout_ms: int = 5000) -> StoreReader:
    """MongoDB at ``uri``, whatever STORE says."""
    return open_reader(MongoSettings(mongo_uri=uri, mongo_database=database, mongo_collection=collection,
                                     mongo_timeout_ms=timeout_ms), store="mongodb")


def configured_reader() -> StoreReader:
    """The store STORE names, with its settings from the environment (MONGO_*, POSTGRES_*
    or COUCHDB_*, docs/SETTINGS.md); an invalid setting as AnalysisInputError."""
    from common.settings import SettingsError
    from common.store.opening import configured, open_configured

    try:
        return open_configured(*configured())
    except SettingsError as exc:
        raise AnalysisInputError(str(exc)) from None


@contextlib.contextmanager
def _opened(store: StoreReader):
    """The store, closed after; its errors as AnalysisInputError."""
    try:
        yield store
    except StoreError as exc:
        raise AnalysisInputError(str(exc)) from None
    finally:
        store.close()


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _doc_times(doc: dict) -> dict[str, float]:
    times = {}
    for name in TIMESTAMPS:
        value = _num(doc.get(name))
        if value is not None:
            times[name] = value
    return times


def load_mongo_run(uri: str, *, producer_ids: list[str] | None = None, name: str = "mongo",
                   database: str = MONGO_DATABASE, collection: str = MONGO_COLLECTION,
                   timeout_ms: int = 5000) -> Run:
    """A pseudo-run from MongoDB's ``images`` collection at ``uri``: :func:`load_store_run`."""
    return load_store_run(mongo_reader(uri, database, collection, timeout_ms), producer_ids=producer_ids, name=name)


def load_store_run(reader: StoreReader, *, producer_ids: list[str] | None = None, name: str = "store") -> Run:
    """A pseudo-run from the stored images (``reader``, closed after): latency =
    stored_at - sent_at (ms)."""
    with _opened(reader) as store:
        docs = list(store.by_producers(producer_ids or None, _STORE_FIELDS))
    rows: list[LatencyRow] = []
    stages: dict[str, dict[str, float]] = {}
    for doc in docs:
        times = _doc_times(doc)
        sent, stored = times.get(SENT_AT), times.get(STORED_AT)
        if sent is None:
            continue
        e2e = (stored - sent) * 1000 if stored is not None else None
        if e2e is not None and e2e < 0:
            e2e = None  # clock trouble; do not invent a latency
        seq = doc.get(SEQ)
        rows.append(LatencyRow(
            image_id=str(doc[IMAGE_ID]), device_id=str(doc.get(DEVICE_ID) or ""),
            producer_id=str(doc.get(PRODUCER_ID) or ""),
            seq=int(seq) if isinstance(seq, (int, float)) and not isinstance(seq, bool) else 0,
            sent_at=sent, result_at=stored, e2e_ms=e2e,
            label=doc.get(LABEL) or None, prediction=doc.get(PREDICTION) or None,
            model=doc.get(MODEL) or None))
        stages[str(doc[IMAGE_ID])] = times
    rows.sort(key=lambda r: (r.sent_at, r.producer_id, r.seq))
    return Run(name=name, rows=rows, stages=stages, source=f"{store.name} {store.where}")


def add_mongo_stages(runs: list[Run], uri: str, *, database: str = MONGO_DATABASE,
                     collection: str = MONGO_COLLECTION, timeout_ms: int = 5000) -> int:
    """:func:`add_store_stages` from MongoDB at ``uri``."""
    return add_store_stages(runs, mongo_reader(uri, database, collection, timeout_ms))


def add_store_stages(runs: list[Run], reader: StoreReader) -> int:
    """Fill in stage timestamps from the store (``reader``, closed after) for the runs'
    images; returns images matched.

    Timestamps already known (stages.csv, latencies.csv) win over the store's.
    """
    matched = 0
    with _opened(reader) as store:
        for run in runs:
            for doc in store.by_ids([r.image_id for r in run.rows], _STORE_FIELDS):
                known = run.stages.setdefault(str(doc[IMAGE_ID]), {})
                for key, value in _doc_times(doc).items():
                    known.setdefault(key, value)
                matched += 1
    return matched


def with_row_stages(run: Run) -> Run:
    """Make sure result_at/sent_at from latencies.csv are in the stage data."""
    for image_id, times in _stages_from_rows(run.rows).items():
        known = run.stages.get(image_id)
        if known is None:
            continue  # only complete what stage data exists; e2e alone is not a stage
        for key, value in times.items():
            if value is not None:
                known.setdefault(key, value)
    return run
