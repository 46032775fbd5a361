"""python -m analysis --compare BEFORE AFTER (analysis/compare.py): two experiments, per
configuration and percentile, said to differ only beyond their intervals."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from analysis.cli import main
from tests.support import write_experiment


def trials(scale: float, seed: int, n: int = 120) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.lognormal(4.5, 0.3, n)).tolist() for _ in range(3)]


def test_before_and_after_per_configuration_and_percentile(tmp_path, capsys):
    before = write_experiment(tmp_path / "before", {1: trials(1.0, 1), 2: trials(1.0, 2), 4: trials(1.0, 4)})
    after = write_experiment(tmp_path / "after", {1: trials(1.0, 11), 2: trials(2.0, 12), 3: trials(1.0, 13)})
    assert main(["--compare", str(before), str(after), "--out", str(tmp_path / "c")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "c" / "compare.csv")))
    assert [(r["configuration"], r["percentile"]) for r in rows] == [
        (c, f"p{p}") for c in ("1-producer", "2-producers") for p in (50, 90, 95, 99)]
    verdicts = {(r["configuration"], r["percentile"]): r["verdict"] for r in rows}
    assert verdicts[("2-producers", "p50")] == "differ: after higher"
    assert all(verdicts[("1-producer", f"p{p}")] == "no difference shown" for p in (50, 90, 95, 99))
    for r in rows:
        low, high, diff = float(r["ci_low_ms"]), float(r["ci_high_ms"]), float(r["difference_ms"])
        assert diff == pytest.approx(float(r["after_ms"]) - float(r["before_ms"]))
        assert (r["verdict"] == "no difference shown") == (low <= 0 <= high)
        assert float(r["before_ci_low_ms"]) <= float(r["before_ms"]) <= float(r["before_ci_high_ms"])
    printed = capsys.readouterr().out
    assert "| 2-producers | p50 |" in printed and "differ: after higher" in printed
    assert f"note: 4-producers: only in {before}" in printed and f"note: 3-producers: only in {after}" in printed


def test_two_single_runs_are_compared_whatever_their_names(tmp_path):
    a = write_experiment(tmp_path / "a", {1: trials(1.0, 1)}) / "1-producer"
    b = write_experiment(tmp_path / "b", {2: trials(1.0, 2)}) / "2-producers"
    assert main(["--compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "c" / "compare.csv")))
    assert {r["configuration"] for r in rows} == {"1-producer / 2-producers"}


def test_nothing_in_common_is_an_error(tmp_path, capsys):
    before = write_experiment(tmp_path / "before", {1: trials(1.0, 1), 2: trials(1.0, 2)})
    after = write_experiment(tmp_path / "after", {3: trials(1.0, 3), 4: trials(1.0, 4)})
    assert main(["--compare", str(before), str(after), "--out", str(tmp_path / "c")]) == 2
    assert "no configuration in common" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--compare", str(before), str(after), str(before), "--out", str(tmp_path / "c")])
