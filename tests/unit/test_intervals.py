"""Confidence intervals (analysis/intervals.py), checked against simulated experiments whose
truth is known (analysis/coverage.py): AR(1) latencies inside a trial, drift between trials."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import coverage as sim
from analysis.intervals import (BAND, block_length, difference_intervals, nearest_rank, percentile_intervals,
                                spread, t_quantile, throughput_interval)
from analysis.report import INTERVAL_NOTE, P99_COVERAGE
from analysis.stats import percentile


def test_coverage_at_three_trials_with_correlated_latencies_and_drift():
    """500 simulated experiments of REPEAT=3 x 200 images (the experiment's default), AR(1)
    rho 0.8 inside a trial and a 5 % drift between trials, fixed seed: the 95 % intervals of
    p50, p90 and p95 cover the truth 90-99 % of the time; p99's as often as the tables say."""
    found = sim.coverage(experiments=500, trials=3, images=200, rho=0.8, sigma=0.4, tau=0.05, seed=1)
    for p in ("p50", "p90", "p95"):
        assert 0.90 <= found[p] <= 0.99, found
    assert abs(found["p99"] - P99_COVERAGE) <= 0.03, found  # the number INTERVAL_NOTE gives
    assert f"{100 * P99_COVERAGE:.0f} %" in INTERVAL_NOTE
    assert 0.90 <= found["throughput"] <= 0.99, found


def test_the_estimate_is_the_exact_nearest_rank_percentile_of_the_pooled_latencies():
    rng = np.random.default_rng(7)
    trials = [rng.exponential(50, n) for n in (200, 180, 37)]
    pooled = sorted(np.concatenate(trials).tolist())
    found = percentile_intervals(trials, replicates=200)
    for p, iv in found.items():
        assert iv.estimate == percentile(pooled, p)
        assert iv.low <= iv.estimate <= iv.high
    assert percentile_intervals(trials, replicates=200) == found  # a fixed seed: the same report twice


def test_padded_rows_give_each_rows_own_nearest_rank():
    rows = np.array([[1.0, 2.0, 3.0, np.inf], [1.0, 2.0, 3.0, 4.0]])
    got = nearest_rank(rows, [50, 75, 100], n=[3, 4])
    assert got.tolist() == [[2.0, 3.0, 3.0], [2.0, 3.0, 4.0]]
    assert nearest_rank(np.arange(1.0, 101.0), [50, 95, 99]).tolist() == [50.0, 95.0, 99.0]


def test_correlated_latencies_are_resampled_in_blocks_and_get_wider_intervals():
    """Not single images: the same values, in an order where neighbours are alike, get longer
    blocks and a wider interval than shuffled (one trial: the spread inside it alone)."""
    rng = np.random.default_rng(3)
    ar = sim.simulate_latencies(rng, 1, 1, 600, rho=0.9, sigma=0.4, tau=0.0)[0]
    shuffled = [rng.permutation(t) for t in ar]
    assert block_length(list(ar)) > 5 and block_length(shuffled) == 1
    wide, narrow = percentile_intervals(list(ar), replicates=400), percentile_intervals(shuffled, replicates=400)
    assert wide[50].estimate == narrow[50].estimate
    assert wide[50].width > 2 * narrow[50].width


def test_the_band_holds_the_tables_intervals():
    rng = np.random.default_rng(5)
    trials = list(rng.lognormal(4, 0.4, (3, 100)))
    band = percentile_intervals(trials, BAND)
    assert percentile_intervals(trials, (50, 90, 95, 99)) == {p: band[float(p)] for p in (50, 90, 95, 99)}
    assert all(band[p].low <= band[p].estimate <= band[p].high for p in BAND)


def test_spread_between_trials_is_restored():
    assert spread(1) == 1.0 and spread(3) == pytest.approx(math.sqrt(1.5))


def test_throughput_interval_is_students_t_over_the_trials():
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-6)
    iv = throughput_interval([10.0, 11.0, 12.0])
    assert iv.estimate == 11.0 and iv.low == pytest.approx(11 - 4.3027 / math.sqrt(3), abs=1e-3)
    assert throughput_interval([10.0]).low is None and throughput_interval([]) is None


def test_paired_differences_are_called_only_when_the_interval_excludes_zero():
    """Two configurations that differ by nothing but share each round's drift: the paired
    interval of their difference seldom excludes zero; one 40 % slower is told apart."""
    rng = np.random.default_rng(11)
    n_exp = 60
    a = sim.simulate_latencies(rng, n_exp, 3, 200, rho=0.8, sigma=0.4, tau=0.0)
    b = sim.simulate_latencies(rng, n_exp, 3, 200, rho=0.8, sigma=0.4, tau=0.0)
    drift = np.exp(0.1 * rng.standard_normal((n_exp, 3, 1)))  # one shift per round, both configurations
    a, b = a * drift, b * drift
    same = slower = 0
    for e in range(n_exp):
        same += difference_intervals(list(a[e]), list(b[e]), (95,), paired=True, replicates=200, seed=e)[95] \
            .excludes_zero()
        slower += difference_intervals(list(a[e]), list(1.4 * b[e]), (50,), paired=True, replicates=200,
                                       seed=e)[50].excludes_zero()
    assert same / n_exp <= 0.10 and slower / n_exp >= 0.5
    with pytest.raises(ValueError, match="paired"):
        difference_intervals([[1.0]], [[1.0], [2.0]], paired=True)


def test_a_trial_without_latencies_is_refused():
    with pytest.raises(ValueError, match="at least one latency"):
        percentile_intervals([[1.0, 2.0], []])
