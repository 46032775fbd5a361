"""A configuration's repeated trials and their pooled view: the part of the run-directory
format (``common.rundir``) that ``make experiment REPEAT=K`` adds (docs/ARCHITECTURE.md,
"Run directory")::

    <experiment>/<config>/          the pooled view of one configuration (e.g. 2-producers/)
        latencies.csv, stages.csv   every trial's rows, trial after trial
        summary.json                pooled over the trials (analysis.summary.pool)
        trials.json                 the trials: number, directory, producer ids, round, settle
        trial-<k>/                  trial k: a run directory of its own (summary.json, producers/ ...)

The pooled view is a run directory like any other, so everything that reads one reads it.
A trial's rows are told apart in it by their producer ids (each trial's producers have ids
of their own, ``<config>-t<k>-<token>-p<i>``), which is what lets the analysis resample trial by
trial.  ``Pool.trial_rows`` reads it back and refuses what would give a wrong figure, with
the file and line: a listed trial whose files are missing, a trial with no image, a CSV
shorter than its summary or its trials say (truncated), rows of a producer that belongs to
no trial, trials of different settings (mixed configurations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.rundir import LATENCIES, STAGES, LatencyRow, RunDir, RunFileError, merge_csv, read_json

TRIALS = "trials.json"
TRIAL_PREFIX = "trial-"
# What every trial of one configuration must agree on (each trial's summary.json).
SETTINGS_KEYS = ("producers", "rate", "images_per_producer")


def trial_dir_name(number: int) -> str:
    return f"{TRIAL_PREFIX}{number}"


@dataclass(frozen=True)
class Trial:
    """One trial of a pooled configuration, as trials.json lists it."""

    number: int
    run: RunDir
    producer_ids: tuple[str, ...]
    record: dict  # everything trials.json says of it (round, order, times, settle)


def complete_rows(run: RunDir) -> list[LatencyRow]:
    """latencies.csv's rows, refused when summary.json says more images were sent than the
    file holds (a file cut at a line boundary reads as a valid, shorter one)."""
    rows = run.latencies()
    sent = run.summary().get("sent")
    if isinstance(sent, int) and not isinstance(sent, bool) and sent != len(rows):
        last = rows[-1].line if rows else 1
        why = "truncated file?" if len(rows) < sent else "rows of another run?"
        raise RunFileError(f"{run.latencies_csv}:{last}: {len(rows)} row(s), but {run.summary_json} says "
                           f"{sent} image(s) were sent ({why})")
    return rows


class Pool:
    """The pooled view of one configuration's trials (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.run = RunDir(path)
        self.path = self.run.path

    def __repr__(self) -> str:
        return f"Pool({str(self.path)!r})"

    @property
    def trials_json(self) -> Path:
        return self.path / TRIALS

    @staticmethod
    def holds_trials(path: Path | str) -> bool:
        """Whether ``path`` is a pooled view (it has trials.json)."""
        return (Path(path) / TRIALS).is_file()

    # ------------------------------------------------------------ writing

    def add_trial(self, number: int) -> RunDir:
        """Trial ``number``'s run directory, made."""
        return RunDir.create(self.path / trial_dir_name(number))

    def write(self, trials: list[dict]) -> None:
        """The pooled CSVs from these trials' (in the order given) and trials.json; each of
        ``trials`` has ``trial`` (its number) and ``producer_ids``, and whatever else the
        experiment records of it."""
        entries = [{**t, "dir": trial_dir_name(t["trial"])} for t in trials]
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (LATENCIES, STAGES):
            merge_csv([self.path / e["dir"] / name for e in entries], self.path / name)
        self.trials_json.write_text(json.dumps({"trials": entries}, indent=2) + "\n")
        self.run = RunDir(self.path)  # the rows were rewritten

    # ------------------------------------------------------------ reading

    def trials(self) -> list[Trial]:
        """trials.json's trials, checked: numbered, each with its directory and producers."""
        where = self.trials_json
        data = read_json(where)
        entries = data.get("trials") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise RunFileError(f"{where}: expected an object with a non-empty list \"trials\"")
        out, seen = [], set()
        for i, e in enumerate(entries):
            number = e.get("trial") if isinstance(e, dict) else None
            ids = e.get("producer_ids") if isinstance(e, dict) else None
            if not isinstance(number, int) or isinstance(number, bool) or number in seen:
                raise RunFileError(f"{where}: trials[{i}]: \"trial\" must be a number not used before")
            if not isinstance(ids, list) or not ids or not all(isinstance(p, str) and p for p in ids):
                raise RunFileError(f"{where}: trials[{i}]: \"producer_ids\" must be a non-empty list of ids")
            seen.add(number)
            out.append(Trial(number, RunDir(self.path / trial_dir_name(number)), tuple(ids), e))
        return out

    def trial_rows(self) -> list[tuple[Trial, list[LatencyRow]]]:
        """Each trial with its rows of the pooled latencies.csv, in file order; every check of
        the module docstring made, errors naming the file and line."""
        trials = self.trials()
        owner = {}
        for t in trials:
            for pid in t.producer_ids:
                if pid in owner:
                    raise RunFileError(f"{self.trials_json}: producer {pid} is in trials {owner[pid].number} "
                                       f"and {t.number}")
                owner[pid] = t
        own_counts = {}
        settings: dict[str, object] | None = None
        first = None
        for t in trials:
            if not t.run.path.is_dir():
                raise RunFileError(f"{t.run.path}: no such trial directory (listed in {self.trials_json})")
            rows = complete_rows(t.run)
            if not rows:
                raise RunFileError(f"{t.run.latencies_csv}: trial {t.number} has no image "
                                   f"(listed in {self.trials_json})")
            for r in rows:
                if r.producer_id not in t.producer_ids:
                    raise RunFileError(f"{t.run.latencies_csv}:{r.line}: producer {r.producer_id} is not one of "
                                       f"trial {t.number}'s ({', '.join(t.producer_ids)}; mixed configurations?)")
            own_counts[t.number] = len(rows)
            said = {k: t.run.summary().get(k) for k in SETTINGS_KEYS if k in t.run.summary()}
            if settings is None:
                settings, first = said, t
            for k, v in said.items():
                if k in settings and settings[k] != v:
                    raise RunFileError(f"{t.run.summary_json}: {k} {v}, but trial {first.number} has "
                                       f"{settings[k]} (mixed configurations: one pooled view per configuration)")
        pooled = self.run.latencies()  # its length is checked against the trials' below
        by_trial: dict[int, list[LatencyRow]] = {t.number: [] for t in trials}
        for r in pooled:
            t = owner.get(r.producer_id)
            if t is None:
                raise RunFileError(f"{self.run.latencies_csv}:{r.line}: producer {r.producer_id} is in no trial of "
                                   f"{self.trials_json} (rows of another configuration?)")
            by_trial[t.number].append(r)
        for t in trials:
            got, want = len(by_trial[t.number]), own_counts[t.number]
            if got != want:
                last = pooled[-1].line if pooled else 1
                raise RunFileError(f"{self.run.latencies_csv}:{last}: {got} row(s) of trial {t.number}, but "
                                   f"{t.run.latencies_csv} has {want} (truncated or stale pooled file?)")
        return [(t, by_trial[t.number]) for t in trials]
