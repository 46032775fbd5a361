"""Exact percentiles of latency samples: *nearest-rank* (docs/ARCHITECTURE.md, "Run
directory").  For n sorted samples x[1] <= ... <= x[n] the p-th percentile is x[k] with
k = ceil(p/100 * n) (k = 1 for p = 0): always one of the measured samples, never an
interpolation, so "p95 = 212 ms" means at least 95 % of the images took at most 212 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

REPORTED = (50, 90, 95, 99)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def latency_summary(values: Iterable[float]) -> dict | None:
    """p50/p90/p95/p99/max of the samples (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return None
    out = {f"p{p}": percentile(ordered, p) for p in REPORTED}
    out["max"] = ordered[-1]
    return out


KNEE_RATIO = 0.95  # a load is past the knee when less than this share of it is stored


def find_knee(points: list[dict], ratio: float = KNEE_RATIO) -> dict | None:
    """The first of ``points`` (dicts with ``offered_img_s`` and ``throughput_img_s``), in
    order of offered load, whose achieved rate is below ``ratio`` of its offered rate:
    where the pipeline stops keeping up.  None if it kept up everywhere."""
    for p in sorted((p for p in points if p.get("offered_img_s")), key=lambda p: p["offered_img_s"]):
        if (p.get("throughput_img_s") or 0.0) < ratio * p["offered_img_s"]:
            return p
    return None
