"""``python -m analysis --compare BEFORE AFTER --out DIR``: two experiments, before and after
a change, compared per configuration and percentile.

Each side is an experiment directory (its configurations, as experiment.json lists them)
or one configuration's directory.  Configurations are matched by name (``2-producers``
with ``2-producers``); for each, every reported percentile gets both estimates with
their 95 % intervals and the interval of after − before.  The two experiments ran at
different times, so nothing pairs their trials: each is resampled on its own (two-stage,
``analysis.intervals``).  They are said to differ only where the interval of the
difference excludes zero; "no difference shown" otherwise, whatever the estimates say.

Writes ``compare.csv`` in DIR and prints the table.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from analysis.differences import compare
from analysis.report import intervals_of
from analysis.runs import AnalysisInputError, Run, expand_experiments, load_run

COMPARE_COLUMNS = ("configuration", "percentile", "before_ms", "before_ci_low_ms", "before_ci_high_ms", "after_ms",
                   "after_ci_low_ms", "after_ci_high_ms", "difference_ms", "ci_low_ms", "ci_high_ms", "verdict")
VERDICTS = {"b higher": "differ: after higher", "b lower": "differ: after lower",
            "no difference shown": "no difference shown"}


def configurations(path: Path) -> dict[str, Run]:
    """Configuration name -> its run, for an experiment directory or one run directory."""
    runs = [load_run(p) for p in expand_experiments([Path(path)])]
    return {run.name: run for run in runs}


def compare_experiments(before: Path, after: Path) -> tuple[list[dict], list[str]]:
    """The rows of compare.csv and notes on configurations only one side has."""
    a, b = configurations(before), configurations(after)
    common = [name for name in a if name in b]
    if not common and len(a) == len(b) == 1:
        common_pairs = [(next(iter(a)), next(iter(b)))]  # two single runs: compare them whatever their names
    else:
        common_pairs = [(name, name) for name in common]
    if not common_pairs:
        raise AnalysisInputError(f"{before} and {after} have no configuration in common "
                                 f"({', '.join(a)} against {', '.join(b)})")
    matched = {name for pair in common_pairs for name in pair}
    notes = ([f"{name}: only in {before}" for name in a if name not in matched]
             + [f"{name}: only in {after}" for name in b if name not in matched])
    rows = []
    for name_a, name_b in common_pairs:
        ra, rb = a[name_a], b[name_b]
        ia, ib = intervals_of(ra)["percentiles"], intervals_of(rb)["percentiles"]
        label = name_a if name_a == name_b else f"{name_a} / {name_b}"
        for d in compare(ra, rb, is_paired=False):
            p = int(d["percentile"][1:])
            rows.append({"configuration": label, "percentile": d["percentile"],
                         "before_ms": ia[p].estimate, "before_ci_low_ms": ia[p].low, "before_ci_high_ms": ia[p].high,
                         "after_ms": ib[p].estimate, "after_ci_low_ms": ib[p].low, "after_ci_high_ms": ib[p].high,
                         "difference_ms": d["difference_ms"], "ci_low_ms": d["ci_low_ms"],
                         "ci_high_ms": d["ci_high_ms"], "verdict": VERDICTS[d["verdict"]]})
    return rows, notes


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COMPARE_COLUMNS)
        for row in rows:
            writer.writerow([repr(round(row[c], 6)) if isinstance(row[c], float) else row[c] for c in COMPARE_COLUMNS])
    return path


def markdown(rows: list[dict], before: Path, after: Path, notes: list[str]) -> str:
    out = io.StringIO()
    out.write(f"before: {before}\nafter:  {after}\n\n")
    out.write("| configuration | percentile | before ms [95 % CI] | after ms [95 % CI] | after − before ms [95 % CI] "
              "| verdict |\n|---|---|---:|---:|---:|---|\n")
    for r in rows:
        out.write(f"| {r['configuration']} | {r['percentile']} | {r['before_ms']:.1f} [{r['before_ci_low_ms']:.1f}, "
                  f"{r['before_ci_high_ms']:.1f}] | {r['after_ms']:.1f} [{r['after_ci_low_ms']:.1f}, "
                  f"{r['after_ci_high_ms']:.1f}] | {r['difference_ms']:+.1f} [{r['ci_low_ms']:+.1f}, "
                  f"{r['ci_high_ms']:+.1f}] | {r['verdict']} |\n")
    out.write("\nThe two experiments are resampled independently (two-stage: trials, then blocks of consecutive "
              "images); they differ only where the interval of after − before excludes 0.\n")
    for note in notes:
        out.write(f"note: {note}\n")
    return out.getvalue()
