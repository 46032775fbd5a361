"""Whether two runs' latencies differ: per percentile, the difference (b − a) and its 95 %
interval (``analysis.intervals.difference_intervals``).  A difference is called one only
where that interval excludes zero; anything else is "no difference shown", however far
apart the two estimates look.

Two configurations of one experiment are compared *paired* when they ran the same rounds
(interleaved trials: trial k of each in round k), so the rounds' shared drift cancels;
two experiments (before and after a change, ``python -m analysis --compare``) are
independent and compared unpaired.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from analysis.intervals import difference_intervals, pooled_percentiles
from analysis.runs import Run
from analysis.stats import REPORTED

DIFFERENCE_COLUMNS = ("a", "b", "percentile", "a_ms", "b_ms", "difference_ms", "ci_low_ms", "ci_high_ms",
                      "paired", "verdict")


def paired(a: Run, b: Run) -> bool:
    """Whether a and b are trials of one experiment's same rounds: both pooled views in the
    same experiment directory, with the same trial numbers, two or more."""
    return (a.path is not None and b.path is not None and a.path.resolve().parent == b.path.resolve().parent
            and len(a.trial_numbers) >= 2 and a.trial_numbers == b.trial_numbers)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "b higher"
    if high < 0:
        return "b lower"
    return "no difference shown"


def compare(a: Run, b: Run, *, is_paired: bool | None = None, a_name: str | None = None,
            b_name: str | None = None) -> list[dict]:
    """One row per reported percentile: both estimates, b − a with its interval, the verdict.
    No rows when either run has no latency."""
    ta, tb = [t for t in a.trials() if t], [t for t in b.trials() if t]
    if not ta or not tb:
        return []
    is_paired = paired(a, b) if is_paired is None else is_paired
    found = difference_intervals(ta, tb, REPORTED, paired=is_paired)
    rows = []
    for p, ea, eb in zip(REPORTED, pooled_percentiles(ta, REPORTED), pooled_percentiles(tb, REPORTED)):
        iv = found[p]
        rows.append({"a": a_name or a.name, "b": b_name or b.name, "percentile": f"p{p}",
                     "a_ms": float(ea), "b_ms": float(eb), "difference_ms": iv.estimate, "ci_low_ms": iv.low,
                     "ci_high_ms": iv.high, "paired": is_paired, "verdict": verdict(iv.low, iv.high)})
    return rows


def adjacent(runs: list[Run]) -> list[dict]:
    """Each run against the next one (a sweep in producer order: 1 vs 2, 2 vs 3 ...)."""
    return [row for a, b in zip(runs, runs[1:]) for row in compare(a, b)]


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(DIFFERENCE_COLUMNS)
        for row in rows:
            writer.writerow(["" if row[c] is None else (repr(round(row[c], 6)) if isinstance(row[c], float)
                                                        else str(row[c]).lower() if isinstance(row[c], bool)
                                                        else row[c]) for c in DIFFERENCE_COLUMNS])
    return path


def markdown(rows: list[dict], title: str = "Differences (b − a)") -> str:
    """The rows as a Markdown table: one line per pair and percentile."""
    out = io.StringIO()
    out.write(f"\n{title}, 95 % intervals; a difference is called one only where its interval excludes 0:\n\n")
    out.write("| a | b | percentile | a ms | b ms | b − a ms [95 % CI] | paired | verdict |\n")
    out.write("|---|---|---|---:|---:|---:|---|---|\n")
    for r in rows:
        out.write(f"| {r['a']} | {r['b']} | {r['percentile']} | {r['a_ms']:.1f} | {r['b_ms']:.1f} | "
                  f"{r['difference_ms']:+.1f} [{r['ci_low_ms']:+.1f}, {r['ci_high_ms']:+.1f}] | "
                  f"{'yes' if r['paired'] else 'no'} | {r['verdict']} |\n")
    return out.getvalue()
