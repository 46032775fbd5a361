"""The store's write latency during a benchmark step, read from the DB writer's own
histogram (``iot_db_consumer_write_duration_seconds``: one batch write to the store, from
the call to its durable acknowledgement) at the start and end of the step.

The quantiles interpolate inside the bucket where the rank falls, the way Prometheus'
``histogram_quantile`` does, so they are as fine as the buckets (common/metrics.py,
``FAST_BUCKETS_S``: 1-2-5 steps); the count of writes is exact.
"""

from __future__ import annotations

import logging
import math
import urllib.request

log = logging.getLogger(__name__)

METRIC = "iot_db_consumer_write_duration_seconds"
PORT_KEY = "DB_CONSUMER_METRICS_PORT"  # the local stack's endpoint (stack/supervisor.py)


def snapshot(env: dict) -> dict[float, float] | None:
    """The writer's cumulative buckets (upper bound in s -> count), or None when the stack
    has no writer metrics (a remote pipeline, metrics off, the writer not up)."""
    port = env.get(PORT_KEY)
    if not port:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError as e:
        log.debug("no write histogram from the DB writer on port %s: %s", port, e)
        return None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == METRIC + "_bucket":
                bound = float(s.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
    return buckets or None


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """The q-quantile (seconds) of a cumulative histogram, interpolated linearly inside its
    bucket; the highest finite bound when the rank falls in the +Inf bucket."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def summary(before: dict | None, after: dict | None) -> dict | None:
    """{"writes", "p50_ms", "p99_ms"} of the writes between two snapshots; None without
    both or without writes (a writer restarted in between starts its counts again)."""
    if not before or not after:
        return None
    delta = {b: after[b] - before.get(b, 0.0) for b in after}
    if any(v < 0 for v in delta.values()):
        return None
    writes = delta.get(math.inf, max(delta.values(), default=0.0))
    if writes <= 0:
        return None
    return {"writes": int(writes),
            "p50_ms": round(quantile(0.5, delta) * 1000, 2),
            "p99_ms": round(quantile(0.99, delta) * 1000, 2)}
