"""Confidence intervals for the percentiles and the throughput the tables report.

The percentile itself stays the exact nearest-rank order statistic of the pooled
latencies (``analysis.stats``); only its interval comes from resampling.

**Which resampling, and why.**  The latencies of one trial are not independent: images
sent close together share the state of the pipeline (a batch, a queue, a busy core), so
one slow image tends to come with slow neighbours.  Resampling single images would treat
200 correlated latencies as 200 independent ones and give intervals far too narrow.  And
trials differ from each other as a whole (the machine drifts between them), which no
resampling inside a trial can see.  So the resampling is **two-stage** and follows how the
data were made:

1. **trials** are drawn with replacement (K of the K trials): the spread between trials;
2. inside each drawn trial, **blocks of consecutive images** (in send order, circular
   blocks of length ``b``) are drawn until the trial's size is reached: the spread inside
   a trial, its autocorrelation kept within each block.

``b`` is chosen from the data: the lag-1 autocorrelation ρ of the log latencies (pooled
over the trials) gives the block length of the moving-block bootstrap for an AR(1)
process, ``b = (1.5 n)^(1/3) (2ρ / (1 − ρ²))^(2/3)`` (n the trial's length; Bühlmann
& Künsch), between 1 and n/3.  Drawing K trials out of K with replacement shrinks the
spread between them by (K − 1)/K (the bootstrap's known bias with few units, Davison &
Hinkley 1997, §3.8), so the replicates are spread back by √(K/(K − 1)) around the
estimate before the interval is read off as their 2.5 % and 97.5 % quantiles.  With one
trial there is no spread between trials to estimate: the interval then covers the
sampling inside that trial only, and says less than it seems.

How well this works is measured, not assumed: ``analysis.coverage`` simulates
experiments whose true percentiles are known (AR(1) latencies inside a trial, a random
shift between trials) and counts how often the 95 % interval covers the truth
(docs/USAGE.md has the table; tests/unit/test_intervals.py checks it).  With three trials
p50, p90 and p95 are covered 90-99 % of the time; p99 less often (about 86 %): it rests
on the few slowest images of each trial, and the tables say so.

**Throughput** is one number per trial (results over that trial's span), so its interval
is Student's t over the trials' values (K − 1 degrees of freedom): with few trials that
is the honest width, where resampling three numbers would be far too narrow.  It needs at
least two trials.

**Differences** between two configurations are resampled the same way, *paired*: when
both ran the same rounds (trial k of each in round k, interleaved), the same rounds are
drawn for both, so the drift they shared cancels in the difference.  A difference is
called one only where the interval of the difference excludes zero.  Runs that were not
made in the same rounds (two experiments, before and after) are resampled independently.
Every interval uses a fixed seed: the same data give the same report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.stats import REPORTED

LEVEL = 0.95
REPLICATES = 2000
SEED = 20_251_206
# The most values one chunk of replicates holds at once (memory, not speed).
CHUNK_VALUES = 4_000_000
# The CDF band's grid of percentiles: every whole percentile up to 99, the reported ones among them.
BAND = tuple(float(p) for p in range(1, 100))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (``low``/``high`` None: none computable)."""

    estimate: float
    low: float | None
    high: float | None

    @property
    def width(self) -> float | None:
        return None if self.low is None else self.high - self.low

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def nearest_rank(sorted_values: np.ndarray, ps, n=None) -> np.ndarray:
    """Nearest-rank percentiles ``ps`` along the last axis of sorted values, with the same
    arithmetic as ``analysis.stats.percentile``; ``n``: each row's count, where rows are
    padded at the end (2-D values)."""
    ps = np.asarray(ps, dtype=float)
    if n is None:
        return sorted_values[..., np.maximum(1, np.ceil(ps / 100 * sorted_values.shape[-1]).astype(int)) - 1]
    k = np.maximum(1, np.ceil(ps[None, :] / 100 * np.asarray(n)[:, None]).astype(int))
    return np.take_along_axis(sorted_values, k - 1, axis=1)


def block_length(trials: list[np.ndarray]) -> int:
    """The block length for these trials (module docstring): 1 for uncorrelated latencies."""
    num = den = 0.0
    for x in trials:
        if len(x) < 3:
            continue
        y = np.log1p(np.asarray(x, dtype=float))
        y = y - y.mean()
        num += float(y[1:] @ y[:-1])
        den += float(y @ y)
    rho = min(0.95, num / den) if den > 0 else 0.0
    if rho <= 0:
        return 1
    n = float(np.median([len(x) for x in trials]))
    b = (1.5 * n) ** (1 / 3) * (2 * rho / (1 - rho ** 2)) ** (2 / 3)
    return int(min(max(1, round(b)), max(1, n // 3)))


def spread(k: int) -> float:
    """How far the replicates are spread back around the estimate: √(K/(K − 1)), 1 for one trial."""
    return math.sqrt(k / (k - 1)) if k > 1 else 1.0


def _blocks(n: int, b: int, rows: int, rng) -> np.ndarray:
    """``rows`` circular block resamples of the indices 0..n-1, each of length n."""
    b = max(1, min(b, n))
    m = -(-n // b)
    starts = rng.integers(0, n, (rows, m))
    return ((starts[:, :, None] + np.arange(b)) % n).reshape(rows, m * b)[:, :n]


def resample(trials: list[np.ndarray], choice: np.ndarray, b: int, ps, rng) -> np.ndarray:
    """Nearest-rank percentiles ``ps`` of each replicate: row r pools, for each slot j, a
    block resample of trial ``choice[r, j]``; returns (rows, len(ps))."""
    rows, slots = choice.shape
    sizes = np.array([len(t) for t in trials])
    width = int(sizes.max()) * slots
    values = np.full((rows, width), np.inf)
    counts = sizes[choice].sum(axis=1)
    offset = np.zeros(rows, dtype=int)
    for j in range(slots):
        for t, x in enumerate(trials):
            hit = np.flatnonzero(choice[:, j] == t)
            if hit.size == 0:
                continue
            idx = _blocks(len(x), b, hit.size, rng)
            cols = offset[hit, None] + np.arange(len(x))
            values[hit[:, None], cols] = np.asarray(x, dtype=float)[idx]
        offset += sizes[choice[:, j]]
    ps = np.asarray(ps, dtype=float)
    if (counts == counts[0]).all() and len(ps) <= 8:
        n = int(counts[0])
        ks = np.maximum(1, np.ceil(ps / 100 * n).astype(int)) - 1
        return np.partition(values[:, :n], np.unique(ks), axis=1)[:, ks]
    values.sort(axis=1)
    return nearest_rank(values, ps, counts)


def _replicates(trials: list[np.ndarray], ps, draws: np.ndarray, b: int, rng) -> np.ndarray:
    """Replicate percentiles for the trial draws ``draws`` (B, K), computed in chunks."""
    per_row = sum(len(t) for t in trials) or 1
    chunk = max(1, CHUNK_VALUES // (per_row * 2))
    return np.concatenate([resample(trials, draws[i:i + chunk], b, ps, rng)
                           for i in range(0, len(draws), chunk)])


def _interval(estimate: np.ndarray, reps: np.ndarray, k: int, level: float, floor: float | None = 0.0):
    scaled = estimate + spread(k) * (reps - estimate)
    low, high = np.quantile(scaled, [(1 - level) / 2, (1 + level) / 2], axis=0)
    if floor is not None:
        low = np.maximum(low, floor)
    return low, high


def _trials(trials) -> list[np.ndarray]:
    out = [np.asarray(t, dtype=float) for t in trials]
    if not out or any(len(t) == 0 for t in out):
        raise ValueError("every trial needs at least one latency")
    return out


def pooled_percentiles(trials: list[np.ndarray], ps) -> np.ndarray:
    return nearest_rank(np.sort(np.concatenate(trials)), ps)


def percentile_intervals(trials, ps=REPORTED, *, replicates: int = REPLICATES, level: float = LEVEL,
                         seed: int = SEED) -> dict[float, Interval]:
    """Percentile -> Interval over the pooled latencies of ``trials`` (each a sequence of
    latencies in send order), by the two-stage resampling of the module docstring."""
    trials = _trials(trials)
    rng = np.random.default_rng(seed)
    estimate = pooled_percentiles(trials, ps)
    k = len(trials)
    draws = rng.integers(0, k, (replicates, k)) if k > 1 else np.zeros((replicates, 1), dtype=int)
    reps = _replicates(trials, ps, draws, block_length(trials), rng)
    low, high = _interval(estimate, reps, k, level)
    return {p: Interval(float(e), float(lo), float(hi)) for p, e, lo, hi in zip(ps, estimate, low, high)}


def difference_intervals(a, b, ps=REPORTED, *, paired: bool, replicates: int = REPLICATES,
                         level: float = LEVEL, seed: int = SEED) -> dict[float, Interval]:
    """Percentile -> Interval of (b's percentile − a's).  ``paired``: trial i of ``a`` and of
    ``b`` ran in the same round (same number of trials), and the same rounds are drawn for
    both; otherwise each is resampled on its own."""
    a, b = _trials(a), _trials(b)
    if paired and len(a) != len(b):
        raise ValueError(f"paired needs the same trials on both sides ({len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)
    est_a, est_b = pooled_percentiles(a, ps), pooled_percentiles(b, ps)
    estimate = est_b - est_a
    ka, kb = len(a), len(b)
    draws_a = rng.integers(0, ka, (replicates, ka)) if ka > 1 else np.zeros((replicates, 1), dtype=int)
    draws_b = draws_a if paired else (rng.integers(0, kb, (replicates, kb)) if kb > 1
                                      else np.zeros((replicates, 1), dtype=int))
    reps_a = _replicates(a, ps, draws_a, block_length(a), rng)
    reps_b = _replicates(b, ps, draws_b, block_length(b), rng)
    if paired:
        low, high = _interval(estimate, reps_b - reps_a, ka, level, floor=None)
    else:
        diff = (est_b + spread(kb) * (reps_b - est_b)) - (est_a + spread(ka) * (reps_a - est_a))
        low, high = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {p: Interval(float(e), float(lo), float(hi)) for p, e, lo, hi in zip(ps, estimate, low, high)}


def throughput_interval(per_trial: list[float], level: float = LEVEL) -> Interval | None:
    """The mean of the trials' throughputs and Student's t interval over them (None without
    values; no interval with one trial)."""
    values = [float(v) for v in per_trial if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return Interval(mean, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = t_quantile((1 + level) / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return Interval(mean, max(0.0, mean - half), mean + half)


# ------------------------------------------------------------------ Student's t

def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile {q} outside (0, 1)")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
