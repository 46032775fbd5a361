"""Differences between configurations (analysis/differences.py): paired by round inside one
experiment, called a difference only where the interval of b - a excludes zero."""

from __future__ import annotations

import csv

from analysis import differences
from analysis.cli import main
from analysis.runs import load_run
from tests.support import write_experiment


def trials(scale: float, seed: int) -> list[list[float]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(scale * rng.lognormal(4.5, 0.3, 120)).tolist() for _ in range(3)]


def test_a_clear_difference_is_called_and_no_difference_is_not(tmp_path):
    out = write_experiment(tmp_path / "e", {1: trials(1.0, 1), 2: trials(1.0, 2), 3: trials(3.0, 3)})
    runs = [load_run(out / name) for name in ("1-producer", "2-producers", "3-producers")]
    assert differences.paired(runs[0], runs[1])  # same experiment, same rounds
    rows = differences.adjacent(runs)
    assert [(r["a"], r["b"], r["percentile"]) for r in rows][:2] == [("1-producer", "2-producers", "p50"),
                                                                    ("1-producer", "2-producers", "p90")]
    same = [r for r in rows if r["b"] == "2-producers"]
    slower = [r for r in rows if r["b"] == "3-producers"]
    assert all(r["verdict"] == "no difference shown" and r["ci_low_ms"] <= 0 <= r["ci_high_ms"] for r in same)
    p50 = next(r for r in slower if r["percentile"] == "p50")
    assert p50["verdict"] == "b higher" and p50["ci_low_ms"] > 0 and p50["paired"] is True
    assert p50["difference_ms"] == p50["b_ms"] - p50["a_ms"]


def test_runs_of_different_experiments_are_not_paired(tmp_path):
    a = load_run(write_experiment(tmp_path / "a", {1: trials(1.0, 1)}) / "1-producer")
    b = load_run(write_experiment(tmp_path / "b", {1: trials(1.0, 2)}) / "1-producer")
    assert not differences.paired(a, b)
    assert {r["paired"] for r in differences.compare(a, b)} == {False}


def test_the_analysis_writes_and_prints_the_differences(tmp_path, capsys):
    out = write_experiment(tmp_path / "e", {1: trials(1.0, 1), 2: trials(3.0, 2)})
    assert main([str(out / "1-producer"), str(out / "2-producers"), "--out", str(tmp_path / "r")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r" / "differences.csv")))
    assert [r["percentile"] for r in rows] == ["p50", "p90", "p95", "p99"]
    assert rows[0]["paired"] == "true" and rows[0]["verdict"] == "b higher"
    printed = capsys.readouterr().out
    assert "| 1-producer | 2-producers | p50 |" in printed and "excludes 0" in printed
