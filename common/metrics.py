"""Prometheus metrics shared by every component (docs/OBSERVABILITY.md lists them, their
buckets and the failure rule).

Each component defines its metrics at module level (one registry per process, the
prometheus_client default) and updates them through :class:`Recorder` methods wrapped
by :func:`guarded`.  :func:`serve` starts a process's ``/metrics`` endpoint; the
inference service serves its own from its Flask app (``inference/metrics.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Callable, TypeVar

from common.settings import MetricsSettings

log = logging.getLogger(__name__)

# 5 ms .. 60 s: about 8 buckets per decade between 10 ms and 10 s (ratio ~1.33).
LATENCY_BUCKETS_S = (0.005, 0.0075, 0.01, 0.0133, 0.0178, 0.0237, 0.0316, 0.0422, 0.0562, 0.075,
                     0.1, 0.133, 0.178, 0.237, 0.316, 0.422, 0.562, 0.75,
                     1.0, 1.33, 1.78, 2.37, 3.16, 4.22, 5.62, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
# Short operations (a commit, a MongoDB bulk write): 0.5 ms .. 10 s.
FAST_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# Batch sizes in images (consumer batches, formed model batches, bulk writes).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)

F = TypeVar("F", bound=Callable)


_METRICS: dict[str, object] = {}
_METRICS_LOCK = threading.Lock()


def metric(kind: str, name: str, documentation: str, labelnames: tuple[str, ...] = (), **kwargs):
    """The process's metric ``name`` (a prometheus_client Counter, Gauge or Histogram),
    created on first use in the default registry: a component's recorder built twice
    (tests) shares its metrics, and a process registers only the metrics it uses."""
    with _METRICS_LOCK:
        if name not in _METRICS:
            import prometheus_client

            cls = {"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge,
                   "histogram": prometheus_client.Histogram}[kind]
            _METRICS[name] = cls(name, documentation, labelnames, **kwargs)
        return _METRICS[name]


class Recorder:
    """Base of a component's metric recorder: ``enabled`` from METRICS_ENABLED.  A subclass
    names its metrics ``prefix`` + name and creates them in :meth:`declare`, which runs only
    when the recorder is enabled (a process with metrics off registers none)."""

    prefix = ""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._failed: set[str] = set()
        if enabled:
            self.declare(self.prefix)

    def declare(self, p: str) -> None:
        """Creates the recorder's metrics, their names starting with ``p``."""


def guarded(method: F) -> F:
    """A Recorder method that never raises and does nothing when the recorder is off."""

    @functools.wraps(method)
    def wrapper(self: Recorder, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a metric must never crash the component
            if method.__name__ not in self._failed:
                self._failed.add(method.__name__)
                log.warning("metric update %s failed (%s: %s); skipped from now on when it fails",
                            method.__name__, type(exc).__name__, exc)
            return None

    return wrapper  # type: ignore[return-value]


class ScrapeWatch:
    """A collector that counts the scrapes of its registry: a batch job (the producer)
    waits for one scrape after its run so that the final counts are read."""

    def __init__(self):
        self.scrapes = 0
        self._cond = threading.Condition()

    def describe(self):
        return []

    def collect(self):
        with self._cond:
            self.scrapes += 1
            self._cond.notify_all()
        return []

    def wait_for_scrape_after(self, count: int, timeout_s: float) -> bool:
        """True once a scrape after the ``count``-th happened, False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.scrapes <= count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class MetricsServer:
    """The running /metrics endpoint of a process (see :func:`serve`)."""

    def __init__(self, server, thread, port: int, watch: ScrapeWatch):
        self.server, self.thread, self.port, self.watch = server, thread, port, watch

    def hold(self, seconds: float) -> bool:
        """Serve until one more scrape (the final counts read), at most ``seconds``."""
        if seconds <= 0:
            return False
        seen = self.watch.scrapes
        log.info("metrics: waiting up to %.0f s for a last scrape of :%d", seconds, self.port)
        return self.watch.wait_for_scrape_after(seen, seconds)

    def wait_first_scrape(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) until /metrics was scraped once: a batch job's counters
        are then seen from zero, so rate() and increase() cover its whole run."""
        if seconds <= 0:
            return False
        log.info("metrics: waiting up to %.0f s for a first scrape of :%d", seconds, self.port)
        return self.watch.wait_for_scrape_after(0, seconds)

    def close(self) -> None:
        try:
            self.server.shutdown()
            self.server.server_close()
        except Exception:  # noqa: BLE001
            pass


def serve(settings: MetricsSettings, component: str) -> MetricsServer | None:
    """Start ``/metrics`` on METRICS_BIND:METRICS_PORT for this process (None when the port
    is 0 or the metrics are off).  A port that cannot be bound is logged, not fatal: the
    pipeline matters more than its metrics."""
    if not settings.metrics_enabled or not settings.metrics_port:
        return None
    from prometheus_client import REGISTRY, start_http_server

    watch = ScrapeWatch()
    try:
        REGISTRY.register(watch)
        server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_bind)
    except Exception as exc:  # noqa: BLE001 - OSError (port taken), a registry clash
        log.error("%s: metrics endpoint on %s:%d not started: %s", component, settings.metrics_bind,
                  settings.metrics_port, exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", component, settings.metrics_bind, settings.metrics_port)
    return MetricsServer(server, thread, settings.metrics_port, watch)


def partition_lag(consumer) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> records behind`` for each partition assigned to ``consumer``
    whose high watermark is known (kafka-python learns it from fetch responses: no request)."""
    out = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            continue
        try:
            # timeout 0: the position this consumer already knows, never a wait on the broker
            position = consumer.position(tp, timeout_ms=0)
        except Exception:  # noqa: BLE001 - not known yet (no fetch since a rebalance)
            continue
        if position is not None:
            out[(tp.topic, tp.partition)] = max(0, high - position)
    return out


class LagGauge:
    """A ``{topic, partition}`` gauge of consumer lag whose label sets follow the assignment
    (a partition lost in a rebalance stops being reported instead of freezing)."""

    def __init__(self, gauge, every_s: float = 1.0):
        self.gauge, self.every_s = gauge, every_s
        self.reported: set[tuple[str, int]] = set()
        self.last = float("-inf")

    def update(self, consumer) -> None:
        """Set the gauge from ``consumer`` (at most once per ``every_s``: called every poll)."""
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        lag = partition_lag(consumer)
        for (topic, part), n in lag.items():
            self.gauge.labels(topic=topic, partition=str(part)).set(n)
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for topic, part in self.reported - assigned:
            try:
                self.gauge.remove(topic, str(part))
            except KeyError:
                pass
        self.reported = (self.reported | set(lag)) & assigned
