"""The bench checks each input size against the [perf] issue's targets (experiments/bench_report.py)."""

from experiments.bench_report import TARGETS, check_targets


def test_each_figure_is_checked_in_its_direction():
    result = {"efficiency": 0.81, "ratio_to_limit": 0.40, "producer_core_ms_per_img": 0.7,
              "p50_25pct_over_batch1": 5.01, "p99_50pct_over_batch1": None, "ratio_to_baseline": 7.2}
    got = check_targets(result, 32)
    assert set(got) == set(TARGETS[32])
    assert {k: v["met"] for k, v in got.items()} == {
        "efficiency": True, "ratio_to_limit": False, "producer_core_ms_per_img": True,
        "p50_25pct_over_batch1": False, "p99_50pct_over_batch1": False, "ratio_to_baseline": True}
    assert got["efficiency"]["target"] == ">= 0.8" and got["efficiency"]["bound"] == 0.8
    assert got["p99_50pct_over_batch1"]["value"] is None


def test_the_large_input_has_its_own_ratio_to_limit():
    got = check_targets({"ratio_to_limit": 0.855, "efficiency": 0.1}, 224)
    assert list(got) == ["ratio_to_limit"] and got["ratio_to_limit"]["met"]
    assert not check_targets({"ratio_to_limit": 0.84}, 224)["ratio_to_limit"]["met"]

