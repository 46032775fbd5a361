"""The producer's Prometheus metrics (docs/OBSERVABILITY.md): what the cameras sent and
how long each image took end to end (the same measure as latencies.csv)."""

from __future__ import annotations

import logging

from common.metrics import LATENCY_BUCKETS_S, Recorder, guarded, metric

log = logging.getLogger(__name__)


class ProducerMetrics(Recorder):
    """``iot_producer_*``."""

    prefix = "iot_producer_"

    def declare(self, p: str) -> None:
        self.sent = metric("counter", p + "images_sent_total", "Images handed to the Kafka producer")
        self.acked = metric("counter", p + "images_acknowledged_total",
                            "Images the broker acknowledged (acks=all)")
        self.failed = metric("counter", p + "images_failed_total",
                             "Images whose delivery gave up (KAFKA_DELIVERY_TIMEOUT_S)")
        self.results = metric("counter", p + "results_received_total",
                              "First result received for an image of this producer")
        self.e2e = metric("histogram", p + "e2e_latency_seconds",
                          "End-to-end latency: result received minus sent_at (same clock)",
                          buckets=LATENCY_BUCKETS_S)

    @guarded
    def image_sent(self) -> None:
        self.sent.inc()

    @guarded
    def image_acked(self) -> None:
        self.acked.inc()

    @guarded
    def image_failed(self) -> None:
        self.failed.inc()

    @guarded
    def result(self, e2e_s: float) -> None:
        self.results.inc()
        self.e2e.observe(e2e_s)
