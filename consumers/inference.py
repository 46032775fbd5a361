"""``python -m consumers.inference``: images topic -> /v1/predict -> results topic.

At-least-once: a batch's results (and dead letters) are published and flushed
before its offsets are committed.  When the service is down the batch is retried
with backoff, never committed and never dropped; group membership is kept alive
meanwhile (see consumers.batching.idle_wait).  Only what the service says about an
image dead-letters it (a per-image error, or a 400/413 that the batch, split in
halves, narrows down to that image); a 401, a 404, a 5xx or a bad answer never does
(TRANSIENT_STATUS).  At start the consumer checks PREDICT_BATCH_IMAGES against the
service's MAX_REQUEST_IMAGES (/v1/model) and refuses to run above it.  Several instances share the topic's
partitions through the consumer group; several service URLs share the batches.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field

from common.deadletter import to_dead_letter
from common.kafka_io import RESULT_PRODUCER_HEADER, make_consumer, make_producer
from common.lifecycle import Backoff, stop_event
from common.log import setup_logging
from common.metrics import serve
from common.models import ModelInfo, PredictResponse
from common.schema import CONTENT_TYPES, InvalidMessage, dumps, make_result_message, parse_image_record
from common.settings import (InferenceClientSettings, KafkaSettings, MetricsSettings, describe, secret,
                             with_flags)
from consumers.batching import (ReadyMarker, all_delivered, commit, gather, idle_wait, rewind,
                                wait_polling)
from consumers.metrics import (DLQ_IMAGE_ERROR, DLQ_INVALID_INPUT, DLQ_INVALID_PREDICTION, DLQ_SERVICE_REFUSED,
                               InferenceConsumerMetrics)

log = logging.getLogger("consumers.inference")

GROUP_ID = "iot-inference"


# The failure policy, by cause (docs/ARCHITECTURE.md, "The inference consumer's failure
# policy").  An image is dead-lettered only for what the service says about *it*; the
# state of the service, or of whatever stands in front of it, never costs an image.
# Transient (keep the batch, back off, never commit, never dead-letter): no answer
# (connection error, timeout), 5xx, 429, and 401/403/404/408 (a token rotation that
# restarts the service before the consumers, a proxy whose route is not up yet); any
# other unexpected status too, for the same reason.  400/413: the service refused the
# whole request, so the batch is split until the image it refuses is alone.
TRANSIENT_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found", 408: "request timeout",
                    429: "too many requests"}
REFUSED_STATUS = (400, 413)


class ServiceUnavailable(RuntimeError):
    """The service cannot answer this request now: keep the batch, back off, retry.

    ``cause`` says why in a few words (``Stats.retries_by_cause`` counts by it), ``status``
    is the HTTP status (None when no response came)."""

    def __init__(self, cause: str, status: int | None = None, url: str = "", detail: str = ""):
        where = f"HTTP {status} from {url}" if status is not None else url
        super().__init__(cause + (f" ({where})" if where else "") + (f": {detail}" if detail else ""))
        self.cause, self.status, self.url, self.detail = cause, status, url, detail


class BatchRejected(RuntimeError):
    """The service refused the whole request (400/413): the same request can never pass.
    The consumer splits the batch until the image it refuses is alone; ``reason`` is the
    service's own words."""

    def __init__(self, status: int, url: str, reason: str):
        super().__init__(f"HTTP {status} from {url}: {reason}")
        self.status, self.url, self.reason = status, url, reason


def _snippet(resp, limit: int = 300) -> str:
    return resp.text[:limit].strip() or "(empty body)"


def _service_error(resp) -> str | None:
    """The ``error`` of the service's JSON error body; None for any other body (a proxy's page)."""
    try:
        body = resp.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error[:1000] if isinstance(error, str) else None


def _first_problems(exc) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                     for e in exc.errors(include_url=False)[:2])[:300]


IMAGE_CONTENT_TYPES = {"image/png": b".png", "image/jpeg": b".jpg"}


def encode_multipart(items: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """The multipart/form-data body of /v1/predict for (image_id, image bytes, content type)
    triples, and its Content-Type: per image, in order, an ``image_id`` text part then an
    ``image`` file part.  Built by hand (one join; about 10x cheaper than urllib3's
    encode_multipart_formdata for 64 images of 3 KB, bench/decode_cost.py) with a random
    boundary that occurs in no image and no id.  ValueError for a content type other than
    image/png or image/jpeg, or an id that is not valid Unicode (a lone surrogate)."""
    ids = [image_id.encode("utf-8") for image_id, _, _ in items]  # UnicodeEncodeError is a ValueError
    for _, _, content_type in items:
        if content_type not in IMAGE_CONTENT_TYPES:
            raise ValueError(f"content type {content_type!r}: image/png or image/jpeg")
    while True:
        boundary = secrets.token_hex(16).encode("ascii")
        if not any(boundary in data for _, data, _ in items) and not any(boundary in i for i in ids):
            break
    dash = b"--" + boundary
    id_head = dash + b'\r\nContent-Disposition: form-data; name="image_id"\r\n\r\n'
    chunks = []
    for image_id, (_, data, content_type) in zip(ids, items):
        chunks += [id_head, image_id, b"\r\n", dash,
                   b'\r\nContent-Disposition: form-data; name="image"; filename="image',
                   IMAGE_CONTENT_TYPES[content_type], b'"\r\nContent-Type: ', content_type.encode("ascii"),
                   b"\r\n\r\n", data, b"\r\n"]
    chunks.append(dash + b"--\r\n")
    return b"".join(chunks), "multipart/form-data; boundary=" + boundary.decode("ascii")


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

    def _call(self, method: str, url: str, path: str, **kwargs):
        import requests

        try:
            return self.session.request(method, f"{url}{path}", timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise ServiceUnavailable("timeout", None, url, f"{type(exc).__name__}: {exc}") from None
        except requests.ConnectionError as exc:
            raise ServiceUnavailable("connection", None, url, f"{type(exc).__name__}: {exc}") from None
        except requests.RequestException as exc:
            raise ServiceUnavailable("request failed", None, url, f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _raise_unless_200(resp, url: str) -> None:
        status = resp.status_code
        if status != 200:
            cause = "server error" if status >= 500 else TRANSIENT_STATUS.get(status, "unexpected status")
            raise ServiceUnavailable(cause, status, url, _snippet(resp))

    def predict(self, instances: list[dict]) -> dict:
        """The service's answer to ``instances``, a valid PredictResponse (as a dict) with
        exactly one prediction per instance: ``predictions[i]`` answers ``instances[i]``.

        Raises ServiceUnavailable (transient: retry the same batch later) or BatchRejected
        (400/413: the service refused this request)."""
        return self._predict([inst["image_id"] for inst in instances], json={"instances": instances})

    def predict_files(self, items: list[tuple[str, bytes, str]]) -> dict:
        """The same as :meth:`predict` for (image_id, image bytes, content type "image/png" or
        "image/jpeg") triples, sent as one multipart/form-data request (no base64, no JSON):
        ``predictions[i]`` answers ``items[i]``; the same errors, the same checks."""
        body, content_type = encode_multipart(items)
        return self._predict([item[0] for item in items], data=body, headers={"Content-Type": content_type})

    def _predict(self, image_ids: list[str], **request) -> dict:
        url = next(self._next)
        resp = self._call("POST", url, "/v1/predict", **request)
        if resp.status_code in REFUSED_STATUS:
            reason = _service_error(resp)
            if reason is None and resp.status_code == 400:
                # Every error of the service is JSON {"error": ...}: a 400 without it comes
                # from something in front of the service and says nothing about the images.
                raise ServiceUnavailable("400 not from the service", 400, url, _snippet(resp))
            raise BatchRejected(resp.status_code, url, reason or _snippet(resp))
        self._raise_unless_200(resp, url)
        return self._predictions(resp, url, image_ids)

    @staticmethod
    def _predictions(resp, url: str, image_ids: list[str]) -> dict:
        """A 200's body, checked.  A body that is not a PredictResponse, or whose predictions
        cannot be paired with the images sent (a wrong count, an entry for another image), is
        transient, not a reason to dead-letter: the images are not at fault, and the answer
        of another try (or of another service URL) will be right.  It is a service bug or
        a damaged response; retrying keeps every image and says so in the log."""
        from pydantic import ValidationError

        try:
            body = PredictResponse.model_validate_json(resp.content)
        except ValidationError as exc:
            raise ServiceUnavailable("invalid response", 200, url,
                                     f"not a PredictResponse: {_first_problems(exc)}") from None
        if len(body.predictions) != len(image_ids):
            raise ServiceUnavailable("invalid response", 200, url,
                                     f"{len(body.predictions)} predictions for {len(image_ids)} instances")
        for i, (pred, image_id) in enumerate(zip(body.predictions, image_ids)):
            if pred.image_id is not None and pred.image_id != image_id:
                raise ServiceUnavailable("invalid response", 200, url,
                                         f"predictions[{i}] is for image {pred.image_id!r}, instances[{i}] "
                                         f"is {image_id!r}: not in the order of the instances")
        return body.model_dump(mode="json")

    def model_info(self, url: str) -> dict:
        """``GET url/v1/model`` (a ModelInfo as a dict); ServiceUnavailable while it cannot answer."""
        from pydantic import ValidationError

        resp = self._call("GET", url, "/v1/model")
        self._raise_unless_200(resp, url)
        try:
            return ModelInfo.model_validate_json(resp.content).model_dump()
        except ValidationError as exc:
            raise ServiceUnavailable("invalid response", 200, url,
                                     f"not a ModelInfo: {_first_problems(exc)}") from None


def service_limits(client: InferenceClient, cfg: InferenceClientSettings, stop) -> dict[str, int] | None:
    """Each service URL's MAX_REQUEST_IMAGES (``max_request_images`` of /v1/model), asking
    again with backoff while a service is not up yet (down, loading, refusing the token for
    now); None when stopped first.  Every URL must answer: each gets batches."""
    limits: dict[str, int] = {}
    backoff = Backoff(cfg.retry_initial_s, cfg.retry_max_s)
    while not stop.is_set():
        failures = []
        for url in client.urls:
            if url not in limits:
                try:
                    limits[url] = client.model_info(url)["max_request_images"]
                except ServiceUnavailable as exc:
                    failures.append(exc)
        if not failures:
            return limits
        delay = backoff.next()
        for exc in failures:
            log.warning("service not ready at start: %s; asking /v1/model again in %.1f s", exc, delay)
        stop.wait(delay)
    return None


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


class InferenceConsumer:
    def __init__(self, kafka: KafkaSettings, client_settings: InferenceClientSettings, stop,
                 metrics: InferenceConsumerMetrics | None = None):
        self.kafka, self.cfg, self.stop = kafka, client_settings, stop
        self.metrics = metrics or InferenceConsumerMetrics()
        self.client = InferenceClient(client_settings)
        self.http = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self.consumer = make_consumer(kafka, kafka.images_topic, group_id=GROUP_ID,
                                      max_poll_records=client_settings.predict_batch_images)
        self.producer = make_producer(kafka)
        self.stats = Stats()
        self.pending: list = []  # send futures of the current batch

    def dead_letter(self, record, reason: str, kind: str) -> None:
        """Send ``record`` to the DLQ with ``reason``; ``kind`` (consumers.metrics.DLQ_*) labels the count."""
        self.stats.dead += 1
        self.metrics.dead_letter(kind)
        log.warning("dead-letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        key, value, headers = to_dead_letter(record, reason, max_bytes=self.kafka.dlq_max_record_bytes)
        self.pending.append(self.producer.send(self.kafka.dlq_topic, key=key, value=value, headers=headers))

    def predict_with_retry(self, items: list[tuple[str, bytes, str]]) -> dict | None:
        backoff = Backoff(self.cfg.retry_initial_s, self.cfg.retry_max_s)
        while not self.stop.is_set():
            try:
                # In a worker thread while this one keeps polling (see wait_polling).
                started = time.perf_counter()
                response = wait_polling(self.consumer, self.http.submit(self.client.predict_files, items))
                self.metrics.predict_call(time.perf_counter() - started)
                return response
            except ServiceUnavailable as exc:
                # Transient whatever the status (see TRANSIENT_STATUS): the batch is kept,
                # nothing is committed or dead-lettered.
                delay = backoff.next()
                self.stats.retries += 1
                self.stats.retries_by_cause[exc.cause] += 1
                self.metrics.retry(exc.cause)
                log.warning("inference unavailable: %s; keeping the batch, retrying %d images in %.1f s",
                            exc, len(items), delay)
                idle_wait(self.consumer, delay, self.stop)
        return None

    def process(self, records) -> bool:
        """Handle one batch; True when everything in it was published (so it may be committed)."""
        received_at = time.time()
        self.pending = []
        valid = []
        for record in records:
            try:
                msg, image = parse_image_record(record.value, record.headers,
                                                max_bytes=self.kafka.max_message_bytes)
            except InvalidMessage as exc:
                self.dead_letter(record, exc.reason, DLQ_INVALID_INPUT)
                continue
            msg["image"] = image  # the file's bytes (schema 1: decoded from base64)
            valid.append((record, msg))
        self.stats.images += len(records)
        self.metrics.polled_batch(len(records))
        for chunk_start in range(0, len(valid), self.cfg.predict_batch_images):
            chunk = valid[chunk_start:chunk_start + self.cfg.predict_batch_images]
            if not self.infer_and_publish(chunk, received_at):
                return False
        self.producer.flush()
        self.stats.batches += 1
        return all_delivered(self.pending)

    def infer_and_publish(self, chunk, received_at: float) -> bool:
        """Classify ``chunk`` (valid (record, message) pairs) and publish a result per image,
        or a dead letter for an image the service refuses; False when stopping first."""
        # One multipart request of the image files as they came (no base64, no JSON).
        items = [(m["image_id"], m["image"], CONTENT_TYPES[m["format"]]) for _r, m in chunk]
        try:
            response = self.predict_with_retry(items)
        except BatchRejected as exc:
            return self.split_refused(chunk, received_at, exc)
        if response is None:  # stopping
            return False
        model = response.get("model", "unknown")
        # predictions[i] answers instances[i] (the service's guarantee, inference/api.py; the
        # client checked the count and the order): paired by position, never by image_id,
        # which two records of one batch may share.
        for (record, msg), pred in zip(chunk, response["predictions"], strict=True):
            if "error" in pred:
                self.dead_letter(record, f"inference failed: {pred['error']}", DLQ_IMAGE_ERROR)
                continue
            try:
                result = make_result_message(msg, prediction=pred.get("label"),
                                             confidence=pred.get("confidence"), model=model,
                                             received_at=received_at,
                                             inferred_at=pred.get("inferred_at", time.time()))
            except InvalidMessage as exc:  # a prediction the result contract refuses
                self.dead_letter(record, f"inference failed: invalid prediction: {exc.reason}",
                                 DLQ_INVALID_PREDICTION)
                continue
            result["published_at"] = time.time()
            # Keyed by producer: each producer reads only its own partition of the results.
            producer_id = msg["producer_id"].encode()
            self.pending.append(self.producer.send(self.kafka.results_topic, key=producer_id, value=dumps(result),
                                                   headers=[(RESULT_PRODUCER_HEADER, producer_id)]))
            self.stats.results += 1
            self.metrics.predicted_image()
        return True

    def split_refused(self, chunk, received_at: float, exc: BatchRejected) -> bool:
        """The service refused the whole request (400/413): something in it, one image or
        the size of the whole, cannot pass.  Send the two halves, recursively, until the
        image it refuses is alone: only that image is dead-lettered, with the service's
        reason, and every other image of the batch gets its prediction."""
        if len(chunk) == 1:
            self.dead_letter(chunk[0][0], f"inference service refused the image: HTTP {exc.status}: {exc.reason}",
                             DLQ_SERVICE_REFUSED)
            return True
        half = len(chunk) // 2
        self.stats.splits += 1
        log.warning("inference service refused a request of %d images (%s); sending it as %d + %d",
                    len(chunk), exc, half, len(chunk) - half)
        return (self.infer_and_publish(chunk[:half], received_at)
                and self.infer_and_publish(chunk[half:], received_at))

    def run(self) -> None:
        log.info("consuming %s as group %s; service %s", self.kafka.images_topic, GROUP_ID,
                 ", ".join(self.client.urls))
        ready = ReadyMarker()
        while not self.stop.is_set():
            records = gather(self.consumer, self.cfg.predict_batch_images, self.cfg.predict_batch_wait_ms)
            ready.check(self.consumer)
            self.metrics.update_lag(self.consumer)
            if not records:
                pass
            elif self.process(records):
                started = time.perf_counter()
                commit(self.consumer, records)
                self.metrics.committed(time.perf_counter() - started)
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
    kafka, metrics = KafkaSettings(), MetricsSettings()
    client = with_flags(InferenceClientSettings, p, predict_batch_images=args.batch_size,
                        predict_batch_wait_ms=args.batch_wait_ms, inference_url=args.inference_url)
    log.info("%s", describe(kafka, client, metrics))
    stop = stop_event()
    recorder = InferenceConsumerMetrics(metrics.metrics_enabled)
    serve(metrics, "inference consumer")
    # Decision: refuse to start rather than clamp.  The batch size is a measured, recorded
    # setting (the experiments report it); running another one than configured would make
    # those records lie, and a wrong configuration is best seen at deploy time.
    limits = service_limits(InferenceClient(client), client, stop)
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
    InferenceConsumer(kafka, client, stop, recorder).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
