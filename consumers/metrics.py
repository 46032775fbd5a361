"""The consumers' Prometheus metrics (docs/OBSERVABILITY.md): what each consumer counts.

Every update goes through a :class:`common.metrics.Recorder` method, so a failing
metric is logged once and never reaches the consumer's loop.
"""

from __future__ import annotations

import logging

from common.metrics import (BATCH_BUCKETS, FAST_BUCKETS_S, LATENCY_BUCKETS_S, LagGauge, Recorder, guarded,
                            metric)

log = logging.getLogger(__name__)

# Why the inference consumer dead-lettered an image: a bounded set, never the free text.
DLQ_INVALID_INPUT = "invalid_input"          # the record is not a valid image message
DLQ_SERVICE_REFUSED = "service_refused"      # 400/413 narrowed down to this image
DLQ_IMAGE_ERROR = "image_error"              # the service's per-image error
DLQ_INVALID_PREDICTION = "invalid_prediction"  # a prediction the result contract refuses


class ConsumerMetrics(Recorder):
    """What both consumers record alike: their lag, per assigned partition."""

    def declare(self, p: str) -> None:
        self.lag = LagGauge(metric("gauge", p + "lag_records",
                                   "Records in the partition not yet consumed (high watermark - position)",
                                   ("topic", "partition")))

    @guarded
    def update_lag(self, consumer) -> None:
        self.lag.update(consumer)


class InferenceConsumerMetrics(ConsumerMetrics):
    """``iot_inference_consumer_*``."""

    prefix = "iot_inference_consumer_"

    def declare(self, p: str) -> None:
        super().declare(p)
        self.polled = metric("counter", p + "records_polled_total", "Records taken from the images topic")
        self.predicted = metric("counter", p + "images_predicted_total",
                                "Images whose result was published to the results topic")
        self.dead = metric("counter", p + "dead_letters_total", "Records sent to the dead-letter topic",
                           ("reason",))
        for reason in (DLQ_INVALID_INPUT, DLQ_SERVICE_REFUSED, DLQ_IMAGE_ERROR, DLQ_INVALID_PREDICTION):
            self.dead.labels(reason=reason)
        self.batch = metric("histogram", p + "batch_images", "Records per processed batch",
                            buckets=BATCH_BUCKETS)
        self.predict = metric("histogram", p + "predict_duration_seconds",
                              "One /v1/predict call that answered 200 (HTTP round trip)",
                              buckets=LATENCY_BUCKETS_S)
        self.retries = metric("counter", p + "retries_total",
                              "Batches kept and retried because the service could not answer", ("cause",))
        self.commit = metric("histogram", p + "commit_duration_seconds", "One offset commit",
                             buckets=FAST_BUCKETS_S)

    @guarded
    def polled_batch(self, n: int) -> None:
        self.polled.inc(n)
        self.batch.observe(n)

    @guarded
    def predicted_image(self) -> None:
        self.predicted.inc()

    @guarded
    def dead_letter(self, reason: str) -> None:
        self.dead.labels(reason=reason).inc()

    @guarded
    def predict_call(self, seconds: float) -> None:
        self.predict.observe(seconds)

    @guarded
    def retry(self, cause: str) -> None:
        self.retries.labels(cause=cause.replace(" ", "_")).inc()

    @guarded
    def committed(self, seconds: float) -> None:
        self.commit.observe(seconds)


class DbConsumerMetrics(ConsumerMetrics):
    """``iot_db_consumer_*``."""

    prefix = "iot_db_consumer_"

    def declare(self, p: str) -> None:
        super().declare(p)
        self.written = metric("counter", p + "documents_written_total",
                              "Upserts acknowledged by MongoDB and committed: kind image (images topic) or result",
                              ("kind",))
        self.errors = metric("counter", p + "write_errors_total",
                             "Failed writes of one document or one bulk command, by kind", ("kind",))
        for kind in ("transient", "disk_full", "deterministic"):
            self.errors.labels(kind=kind)
        for kind in ("image", "result"):
            self.written.labels(kind=kind)
        self.dead = metric("counter", p + "dead_letters_total", "Records sent to the dead-letter topic")
        self.skipped = metric("counter", p + "invalid_images_total",
                              "Invalid image records skipped (the inference consumer dead-letters them)")
        self.bulk = metric("histogram", p + "bulk_updates", "Upserts per bulk_write (an image and its result polled together are one)",
                           buckets=BATCH_BUCKETS)
        self.write = metric("histogram", p + "write_duration_seconds", "One bulk_write (attempt)",
                            buckets=FAST_BUCKETS_S)

    @guarded
    def documents(self, kind: str, n: int) -> None:
        if n:
            self.written.labels(kind=kind).inc(n)

    @guarded
    def write_error(self, kind: str, n: int = 1) -> None:
        self.errors.labels(kind=kind.replace(" ", "_")).inc(n)

    @guarded
    def dead_letter(self, kind: str = "") -> None:
        self.dead.inc()

    def committed(self, seconds: float) -> None:
        """The DB consumer keeps no commit histogram: its commits are off the latency path."""

    @guarded
    def skipped_image(self) -> None:
        self.skipped.inc()

    @guarded
    def bulk_write(self, n: int, seconds: float) -> None:
        self.bulk.observe(n)
        self.write.observe(seconds)
