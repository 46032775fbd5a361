"""``python -m consumers.inference``: images topic -> /v1/predict -> results topic.

A handler of the consume loop (``consumers.loop``): the loop gathers a batch (at most
PREDICT_BATCH_IMAGES records, waiting at most PREDICT_BATCH_WAIT_MS), this handler
validates it, sends the valid images as one multipart request (in a worker thread while
the loop keeps the group membership alive) and turns the answer into one outcome per
record: a result for the results topic, keyed by producer, or a dead letter.  The loop
publishes them and commits only after they are acknowledged.

Only what the service says about an image dead-letters it (a per-image error, or a
400/413 that the batch, split in halves, narrows down to that image); a 401, a 404, a
5xx or a bad answer never does: the batch is retried with backoff, never committed and
never dropped (``consumers.predict_client``).  At start the consumer checks
PREDICT_BATCH_IMAGES against the service's MAX_REQUEST_IMAGES (/v1/model) and refuses to
run above it.  Several instances share the topic's partitions through the consumer
group; several service URLs share the batches.  ``INFERENCE_MODE=embedded`` runs the
service's model in this process instead (``consumers.embedded``), with the same client
contract and failure policy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from common.kafka_io import make_consumer, make_producer
from common.lifecycle import stop_event
from common.log import setup_logging
from common.metrics import serve
from common.schema import InvalidMessage, dumps, make_result_message, parse_image_record
from common.wire import CONTENT_TYPES, FORMAT, IMAGE, IMAGE_ID, PRODUCER_ID, PUBLISHED_AT, RESULT_PRODUCER_HEADER
from common.settings import InferenceClientSettings, KafkaSettings, MetricsSettings, describe, with_flags
from consumers.loop import ConsumeLoop, DeadLetter, Output, Retry
from consumers.metrics import (DLQ_IMAGE_ERROR, DLQ_INVALID_INPUT, DLQ_INVALID_PREDICTION, DLQ_SERVICE_REFUSED,
                               InferenceConsumerMetrics)
from consumers.predict_client import (BatchRejected, InferenceClient, ServiceUnavailable,  # noqa: F401
                                      encode_multipart, service_limits)

log = logging.getLogger("consumers.inference")

GROUP_ID = "iot-inference"


@dataclass
class Stats:
    images: int = 0
    results: int = 0
    dead: int = 0
    batches: int = 0
    retries: int = 0
    retries_by_cause: Counter = field(default_factory=Counter)  # ServiceUnavailable.cause -> retries
    splits: int = 0  # refused requests (400/413) split in two
    last_log: float = 0.0

    def maybe_log(self, every_s: float = 10.0) -> None:
        now = time.monotonic()
        if now - self.last_log >= every_s and self.batches:
            causes = ", ".join(f"{cause} {n}" for cause, n in sorted(self.retries_by_cause.items()))
            log.info("images %d, results %d, dead-lettered %d, batches %d (avg %.1f), retries %d%s, "
                     "refused requests split %d", self.images, self.results, self.dead, self.batches,
                     self.images / self.batches, self.retries, f" ({causes})" if causes else "", self.splits)
            self.last_log = now


class InferenceHandler:
    """The handler: image records -> one /v1/predict call per PREDICT_BATCH_IMAGES -> outcomes."""

    log = log

    def __init__(self, kafka: KafkaSettings, cfg: InferenceClientSettings,
                 metrics: InferenceConsumerMetrics | None = None, client: InferenceClient | None = None):
        self.kafka, self.cfg = kafka, cfg
        self.metrics = metrics or InferenceConsumerMetrics()
        self.client = client or InferenceClient(cfg)
        self.http = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self.stats = Stats()

    def dead(self, reason: str, kind: str) -> DeadLetter:
        self.stats.dead += 1
        return DeadLetter(reason, kind)

    def handle(self, records: list, loop) -> list:
        received_at = time.time()
        outcomes: list = [None] * len(records)
        valid = []
        for i, record in enumerate(records):
            try:
                msg, image = parse_image_record(record.value, record.headers, max_bytes=self.kafka.max_message_bytes)
            except InvalidMessage as exc:
                outcomes[i] = self.dead(exc.reason, DLQ_INVALID_INPUT)
                continue
            msg[IMAGE] = image  # the file's bytes (schema 1: decoded from base64)
            valid.append((i, msg))
        if loop.attempt == 0:
            self.stats.images += len(records)
            self.stats.batches += 1
            self.metrics.polled_batch(len(records))
        size = self.cfg.predict_batch_images
        for start in range(0, len(valid), size):
            try:
                self.infer(valid[start:start + size], received_at, loop, outcomes)
            except ServiceUnavailable as exc:
                # Transient whatever the status (consumers.predict_client): the images are
                # kept, nothing is committed or dead-lettered.
                retry = Retry(exc.cause, str(exc), after_s=exc.retry_after_s)
                for i, _msg in valid[start:]:
                    outcomes[i] = retry
                break
        return outcomes

    def infer(self, chunk: list, received_at: float, loop, outcomes: list) -> None:
        """Classify ``chunk`` ((index, message) pairs) into ``outcomes``: a result per image, or a
        dead letter for an image the service refuses.  Raises ServiceUnavailable."""
        # One multipart request of the image files as they came (no base64, no JSON).
        items = [(m[IMAGE_ID], m[IMAGE], CONTENT_TYPES[m[FORMAT]]) for _i, m in chunk]
        started = time.perf_counter()
        try:
            response = loop.wait(self.http.submit(self.client.predict_files, items))
        except BatchRejected as exc:
            self.split_refused(chunk, received_at, loop, outcomes, exc)
            return
        self.metrics.predict_call(time.perf_counter() - started)
        model = response.get("model", "unknown")
        # predictions[i] answers instances[i] (the service's guarantee, inference/api.py; the
        # client checked the count and the order): paired by position, never by image_id,
        # which two records of one batch may share.
        for (i, msg), pred in zip(chunk, response["predictions"], strict=True):
            if "error" in pred:
                outcomes[i] = self.dead(f"inference failed: {pred['error']}", DLQ_IMAGE_ERROR)
                continue
            try:
                result = make_result_message(msg, prediction=pred.get("label"), confidence=pred.get("confidence"),
                                             model=model, received_at=received_at,
                                             inferred_at=pred.get("inferred_at", time.time()))
            except InvalidMessage as exc:  # a prediction the result contract refuses
                outcomes[i] = self.dead(f"inference failed: invalid prediction: {exc.reason}",
                                        DLQ_INVALID_PREDICTION)
                continue
            result[PUBLISHED_AT] = time.time()
            # Keyed by producer: each producer reads only its own partition of the results.
            producer_id = msg[PRODUCER_ID].encode()
            outcomes[i] = Output(self.kafka.results_topic, dumps(result), producer_id,
                                 [(RESULT_PRODUCER_HEADER, producer_id)])
            self.stats.results += 1
            self.metrics.predicted_image()

    def split_refused(self, chunk, received_at: float, loop, outcomes: list, exc: BatchRejected) -> None:
        """The service refused the whole request (400/413): something in it, one image or
        the size of the whole, cannot pass.  Send the two halves, recursively, until the
        image it refuses is alone: only that image is dead-lettered, with the service's
        reason, and every other image of the batch gets its prediction."""
        if len(chunk) == 1:
            outcomes[chunk[0][0]] = self.dead(
                f"inference service refused the image: HTTP {exc.status}: {exc.reason}", DLQ_SERVICE_REFUSED)
            return
        half = len(chunk) // 2
        self.stats.splits += 1
        log.warning("inference service refused a request of %d images (%s); sending it as %d + %d",
                    len(chunk), exc, half, len(chunk) - half)
        self.infer(chunk[:half], received_at, loop, outcomes)
        self.infer(chunk[half:], received_at, loop, outcomes)

    def retrying(self, retry: Retry, records: int, total: int, delay: float) -> None:
        self.stats.retries += 1
        self.stats.retries_by_cause[retry.cause] += 1
        self.metrics.retry(retry.cause)
        log.warning("inference unavailable: %s; keeping the batch, retrying %d images in %.1f s",
                    retry.detail, records, delay)

    def tick(self) -> None:
        self.stats.maybe_log()

    def close(self) -> None:
        self.http.shutdown(wait=False)


def make_loop(kafka: KafkaSettings, cfg: InferenceClientSettings, stop,
              metrics: InferenceConsumerMetrics | None = None,
              client: InferenceClient | None = None) -> tuple[InferenceHandler, ConsumeLoop]:
    handler = InferenceHandler(kafka, cfg, metrics, client)
    consumer = make_consumer(kafka, kafka.images_topic, group_id=GROUP_ID, max_poll_records=cfg.predict_batch_images)
    loop = ConsumeLoop(handler, consumer=consumer, producer=make_producer(kafka), kafka=kafka, stop=stop,
                       metrics=handler.metrics, max_records=cfg.predict_batch_images,
                       wait_ms=cfg.predict_batch_wait_ms, retry_initial_s=cfg.retry_initial_s,
                       retry_max_s=cfg.retry_max_s)
    return handler, loop


def run(kafka: KafkaSettings, cfg: InferenceClientSettings, stop, metrics: InferenceConsumerMetrics,
        client: InferenceClient | None = None) -> None:
    handler, loop = make_loop(kafka, cfg, stop, metrics, client)
    log.info("consuming %s as group %s; service %s", kafka.images_topic, GROUP_ID, ", ".join(handler.client.urls))
    try:
        loop.run()
    finally:
        handler.close()
        log.info("stopped")


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m consumers.inference", description=__doc__)
    p.add_argument("--batch-size", type=int, help="images per /v1/predict request")
    p.add_argument("--batch-wait-ms", type=int, help="longest wait to fill a batch")
    p.add_argument("--inference-url", help="service URL(s), comma-separated")
    args = p.parse_args(argv)
    kafka, metrics = with_flags(KafkaSettings, p), with_flags(MetricsSettings, p)
    client = with_flags(InferenceClientSettings, p, predict_batch_images=args.batch_size,
                        predict_batch_wait_ms=args.batch_wait_ms, inference_url=args.inference_url)
    log.info("%s", describe(kafka, client, metrics))
    stop = stop_event()
    recorder = InferenceConsumerMetrics(metrics.metrics_enabled)
    serve(metrics, "inference consumer")
    # Decision: refuse to start rather than clamp.  The batch size is a measured, recorded
    # setting (the experiments report it); running another one than configured would make
    # those records lie, and a wrong configuration is best seen at deploy time.
    if client.inference_mode == "embedded":
        from consumers.embedded import embedded_client

        predictor = embedded_client(client)  # the service's model in this process (INFERENCE_MODE)
    else:
        predictor = InferenceClient(client)
    limits = service_limits(predictor, client, stop)
    if limits is None:  # stopped while waiting for the service
        return 0
    over = {url: n for url, n in limits.items() if client.predict_batch_images > n}
    if over:
        log.error("invalid setting: PREDICT_BATCH_IMAGES=%d is above the service's MAX_REQUEST_IMAGES (%s): "
                  "every full batch would be refused (HTTP 400); refusing to start.  Set "
                  "PREDICT_BATCH_IMAGES to at most %d or raise MAX_REQUEST_IMAGES on the service",
                  client.predict_batch_images, ", ".join(f"{n} at {url}" for url, n in over.items()),
                  min(over.values()))
        return 2
    log.info("service limits: MAX_REQUEST_IMAGES %s", ", ".join(f"{n} at {url}" for url, n in limits.items()))
    run(kafka, client, stop, recorder, predictor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
