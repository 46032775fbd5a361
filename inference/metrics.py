"""The inference service's Prometheus metrics (docs/OBSERVABILITY.md) and its ``/metrics``.

Gunicorn runs several worker processes: prometheus_client's multiprocess mode keeps each
worker's values in files under ``PROMETHEUS_MULTIPROC_DIR`` (``gunicorn.conf.py`` sets it
before any worker starts, empties it at start and marks a dead worker's files in
``child_exit``), and ``/metrics``, answered by any one worker, adds them all up.  Counters
and histograms are summed over the workers; the queue depth is the sum over the live
workers, the model's readiness the minimum (1 only when every live worker is ready).

prometheus_client's process collector sees one process only, so in multiprocess mode
``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` are those of the whole
Gunicorn tree (master and workers), read with psutil.  Outside Gunicorn (the tests'
in-process app) the default registry is served as it is.
"""

from __future__ import annotations

import logging
import os

from common.metrics import BATCH_BUCKETS, LATENCY_BUCKETS_S, Recorder, guarded, metric
from common.settings import GunicornSettings

log = logging.getLogger(__name__)


def multiprocess_dir() -> str | None:
    """The workers' metric files' directory: gunicorn.conf.py sets it for them."""
    return GunicornSettings().prometheus_multiproc_dir or None


class ServiceMetrics(Recorder):
    """``iot_service_*``; also the dynamic batcher's observer (queue depth, formed batches)."""

    prefix = "iot_service_"

    def declare(self, p: str) -> None:
        self.requests = metric("counter", p + "requests_total", "HTTP requests answered, by route and status",
                               ("handler", "code"))
        self.images = metric("counter", p + "images_total",
                             "Images received in /v1/predict requests, by outcome", ("outcome",))
        for outcome in ("predicted", "invalid"):
            self.images.labels(outcome=outcome)
        self.duration = metric("histogram", p + "request_duration_seconds",
                               "Time to answer a request, by route", ("handler",), buckets=LATENCY_BUCKETS_S)
        self.model = metric("histogram", p + "model_duration_seconds",
                            "One model call on a formed batch", buckets=LATENCY_BUCKETS_S)
        self.batch = metric("histogram", p + "model_batch_images",
                            "Images per formed batch (the dynamic batcher's merge)", buckets=BATCH_BUCKETS)
        self.queue = metric("gauge", p + "queue_images", "Images waiting in the dynamic batchers' queues",
                            multiprocess_mode="livesum")
        self.ready = metric("gauge", p + "model_ready",
                            "1 when the model is loaded and warm (every live worker), else 0",
                            multiprocess_mode="livemin")
        self.failed = metric("gauge", p + "model_load_failed",
                             "1 when a worker's model failed to load", multiprocess_mode="livemax")
        self.ready.set(0)
        self.failed.set(0)

    @guarded
    def request(self, handler: str, code: int, seconds: float) -> None:
        self.requests.labels(handler=handler, code=str(code)).inc()
        self.duration.labels(handler=handler).observe(seconds)

    @guarded
    def predicted_images(self, predicted: int, invalid: int) -> None:
        if predicted:
            self.images.labels(outcome="predicted").inc(predicted)
        if invalid:
            self.images.labels(outcome="invalid").inc(invalid)

    @guarded
    def model_state(self, ready: bool, failed: bool) -> None:
        self.ready.set(1 if ready else 0)
        self.failed.set(1 if failed else 0)

    # the dynamic batcher's observer
    @guarded
    def queue_depth(self, images: int) -> None:
        self.queue.set(images)

    @guarded
    def model_batch(self, images: int, seconds: float) -> None:
        self.batch.observe(images)
        self.model.observe(seconds)


class _GunicornTreeCollector:
    """CPU seconds and resident memory of the Gunicorn master and all its workers."""

    def describe(self):
        return []

    def collect(self):
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cpu = rss = 0.0
        try:
            master = psutil.Process(os.getppid())
            for proc in [master, *master.children(recursive=True)]:
                try:
                    t = proc.cpu_times()
                    cpu += t.user + t.system
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        yield CounterMetricFamily("process_cpu_seconds", "CPU seconds of the Gunicorn master and workers",
                                  value=cpu)
        yield GaugeMetricFamily("process_resident_memory_bytes",
                                "Resident memory of the Gunicorn master and workers", value=rss)


def exposition() -> tuple[bytes, str]:
    """The body and content type of ``/metrics``."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    path = multiprocess_dir()
    if not path:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    registry.register(_GunicornTreeCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
