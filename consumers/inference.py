"""``python -m consumers.inference``: images topic -> /v1/predict -> results topic.

At-least-once: a batch's results (and dead letters) are published and flushed
before its offsets are committed.  When the service is down the batch is retried
with backoff, never committed and never dropped; group membership is kept alive
meanwhile (see consumers.batching.idle_wait).  Several instances share the topic's
partitions through the consumer group; several service URLs share the batches.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common.kafka_io import make_consumer, make_producer
from common.lifecycle import Backoff, stop_event
from common.log import setup_logging
from common.schema import (InvalidMessage, dumps, make_dead_letter, make_result_message,
                           parse_image_message)
from common.settings import InferenceClientSettings, KafkaSettings, describe, secret, with_flags
from consumers.batching import (ReadyMarker, all_delivered, commit, gather, idle_wait, rewind,
                                wait_polling)

log = logging.getLogger("consumers.inference")

GROUP_ID = "iot-inference"


class ServiceUnavailable(RuntimeError):
    """The service cannot answer now (down, loading, overloaded): retry later."""


class BatchRejected(RuntimeError):
    """The service refused the whole request (4xx): retrying the same batch cannot help."""


class InferenceClient:
    """POSTs batches to /v1/predict, spreading them round-robin over the service URLs."""

    def __init__(self, settings: InferenceClientSettings):
        import requests

        self.urls = [u.strip().rstrip("/") for u in settings.inference_url.split(",") if u.strip()]
        self._next = itertools.cycle(self.urls)
        self.timeout = settings.inference_timeout_s
        self.session = requests.Session()
        token = secret(settings.inference_token)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def predict(self, instances: list[dict]) -> dict:
        import requests

        url = next(self._next)
        try:
            resp = self.session.post(f"{url}/v1/predict", json={"instances": instances},
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"{url}: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code == 200:
            return resp.json()
        if resp.status_code in (429, 502, 503, 504) or resp.status_code >= 500:
            raise ServiceUnavailable(f"{url}: HTTP {resp.status_code} {resp.text[:200]}")
        raise BatchRejected(f"{url}: HTTP {resp.status_code} {resp.text[:300]}")


@dataclass
class Stats:
    images: int = 0
    results: int = 0
    dead: int = 0
    batches: int = 0
    retries: int = 0
    last_log: float = 0.0

    def maybe_log(self, every_s: float = 10.0) -> None:
        now = time.monotonic()
        if now - self.last_log >= every_s and self.batches:
            log.info("images %d, results %d, dead-lettered %d, batches %d (avg %.1f), retries %d",
                     self.images, self.results, self.dead, self.batches,
                     self.images / self.batches, self.retries)
            self.last_log = now


class InferenceConsumer:
    def __init__(self, kafka: KafkaSettings, client_settings: InferenceClientSettings, stop):
        self.kafka, self.cfg, self.stop = kafka, client_settings, stop
        self.client = InferenceClient(client_settings)
        self.http = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self.consumer = make_consumer(kafka, kafka.images_topic, group_id=GROUP_ID,
                                      max_poll_records=client_settings.predict_batch_images)
        self.producer = make_producer(kafka)
        self.stats = Stats()
        self.pending: list = []  # send futures of the current batch

    def dead_letter(self, record, reason: str) -> None:
        self.stats.dead += 1
        log.warning("dead-letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        self.pending.append(self.producer.send(
            self.kafka.dlq_topic, key=record.key, value=dumps(make_dead_letter(
                source_topic=record.topic, partition=record.partition, offset=record.offset,
                reason=reason, payload=record.value))))

    def predict_with_retry(self, instances: list[dict]) -> dict | None:
        backoff = Backoff(self.cfg.retry_initial_s, self.cfg.retry_max_s)
        while not self.stop.is_set():
            try:
                # In a worker thread while this one keeps polling (see wait_polling).
                return wait_polling(self.consumer, self.http.submit(self.client.predict, instances))
            except ServiceUnavailable as exc:
                delay = backoff.next()
                self.stats.retries += 1
                log.warning("inference unavailable (%s); retrying %d images in %.1f s",
                            exc, len(instances), delay)
                idle_wait(self.consumer, delay, self.stop)
        return None

    def process(self, records) -> bool:
        """Handle one batch; True when everything in it was published (so it may be committed)."""
        received_at = time.time()
        self.pending = []
        valid = []
        for record in records:
            try:
                msg, _png = parse_image_message(record.value, max_bytes=self.kafka.max_message_bytes)
            except InvalidMessage as exc:
                self.dead_letter(record, exc.reason)
                continue
            valid.append((record, msg))
        self.stats.images += len(records)
        for chunk_start in range(0, len(valid), self.cfg.predict_batch_images):
            chunk = valid[chunk_start:chunk_start + self.cfg.predict_batch_images]
            if not self.infer_and_publish(chunk, received_at):
                return False
        self.producer.flush()
        self.stats.batches += 1
        return all_delivered(self.pending)

    def infer_and_publish(self, chunk, received_at: float) -> bool:
        instances = [{"image_id": m["image_id"], "image": m["image"]} for _r, m in chunk]
        try:
            response = self.predict_with_retry(instances)
        except BatchRejected as exc:
            # Only a bug can get here (the batch was validated); dead-letter it rather
            # than block the partition forever.
            log.error("service rejected a batch: %s", exc)
            for record, _m in chunk:
                self.dead_letter(record, f"inference service rejected the batch: {exc}")
            return True
        if response is None:  # stopping
            return False
        predictions = {p.get("image_id"): p for p in response.get("predictions", [])}
        model = response.get("model", "unknown")
        for record, msg in chunk:
            pred = predictions.get(msg["image_id"])
            if pred is None or "error" in pred:
                reason = pred.get("error") if pred else "no prediction in the service's response"
                self.dead_letter(record, f"inference failed: {reason}")
                continue
            try:
                result = make_result_message(msg, prediction=pred.get("label"),
                                             confidence=pred.get("confidence"), model=model,
                                             received_at=received_at,
                                             inferred_at=pred.get("inferred_at", time.time()))
            except InvalidMessage as exc:  # a prediction the result contract refuses
                self.dead_letter(record, f"inference failed: invalid prediction: {exc.reason}")
                continue
            result["published_at"] = time.time()
            self.pending.append(self.producer.send(self.kafka.results_topic, key=msg["device_id"].encode(),
                                                   value=dumps(result)))
            self.stats.results += 1
        return True

    def run(self) -> None:
        log.info("consuming %s as group %s; service %s", self.kafka.images_topic, GROUP_ID,
                 ", ".join(self.client.urls))
        ready = ReadyMarker()
        while not self.stop.is_set():
            records = gather(self.consumer, self.cfg.predict_batch_images, self.cfg.predict_batch_wait_ms)
            ready.check(self.consumer)
            if not records:
                pass
            elif self.process(records):
                commit(self.consumer, records)
            else:
                rewind(self.consumer, records)
            self.stats.maybe_log()
        self.producer.flush()
        self.producer.close()
        self.consumer.close()
        self.http.shutdown(wait=False)
        log.info("stopped")


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m consumers.inference", description=__doc__)
    p.add_argument("--batch-size", type=int, help="images per /v1/predict request")
    p.add_argument("--batch-wait-ms", type=int, help="longest wait to fill a batch")
    p.add_argument("--inference-url", help="service URL(s), comma-separated")
    args = p.parse_args(argv)
    kafka = KafkaSettings()
    client = with_flags(InferenceClientSettings, p, predict_batch_images=args.batch_size,
                        predict_batch_wait_ms=args.batch_wait_ms, inference_url=args.inference_url)
    log.info("%s", describe(kafka, client))
    InferenceConsumer(kafka, client, stop_event()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
