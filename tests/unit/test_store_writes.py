"""The store-write figures of the benchmark (experiments/store_writes.py): quantiles of the
DB writer's cumulative histogram between two scrapes, as Prometheus' histogram_quantile
computes them."""

import math

from experiments import store_writes


def test_quantile_interpolates_inside_the_bucket_where_the_rank_falls():
    cumulative = {0.001: 0, 0.002: 10, 0.005: 20, math.inf: 20}
    # rank 10 of 20 is the top of the (0.001, 0.002] bucket; rank 15 is halfway into the next
    assert store_writes.quantile(0.5, cumulative) == 0.002
    assert math.isclose(store_writes.quantile(0.75, cumulative), 0.0035)


def test_a_rank_in_the_inf_bucket_gives_the_highest_finite_bound():
    assert store_writes.quantile(0.99, {0.01: 1, 0.1: 1, math.inf: 10}) == 0.1


def test_summary_counts_only_the_writes_between_the_scrapes():
    before = {0.01: 5, 0.1: 5, math.inf: 5}
    after = {0.01: 5, 0.1: 105, math.inf: 105}  # 100 writes, all in (10, 100] ms
    got = store_writes.summary(before, after)
    assert got["writes"] == 100
    assert 10 < got["p50_ms"] < got["p99_ms"] <= 100


def test_no_figure_without_writes_or_across_a_writer_restart():
    scrape = {0.01: 3, math.inf: 3}
    assert store_writes.summary(scrape, scrape) is None
    assert store_writes.summary(scrape, {0.01: 1, math.inf: 1}) is None  # counts restarted
    assert store_writes.summary(None, scrape) is None


def test_snapshot_without_a_writer_endpoint_is_none():
    assert store_writes.snapshot({}) is None
