"""Simulated IoT cameras: send images at a fixed rate and time each one's result.

One producer process plays ``--devices`` cameras (each a Kafka key, so a camera's
images stay in order on one partition), stamps ``sent_at`` right before each send,
and listens on the results topic for its own images: end-to-end latency is the
time the result arrived minus ``sent_at``, both read from this host's clock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from kafka import TopicPartition
from kafka.errors import KafkaError
from tqdm import tqdm

from common.dataset import DatasetUnavailable
from common.kafka_io import key_partition, make_consumer
from common.rundir import RunDir
from common.models import ResultMessage
from common.schema import (IMAGE_SCHEMA_JSON, InvalidMessage, dumps, image_record, make_image_message,
                           parse_result_message)
from common.wire import (DEVICE_ID, E2E_MS, IMAGE, IMAGE_ID, INFERRED_AT, LABEL, MODEL, PREDICTION, PRODUCER_ID,
                         PUBLISHED_AT, RECEIVED_AT, RESULT_AT, RESULT_PRODUCER_HEADER, SENT_AT, SEQ, STORED_AT)
from common.settings import KafkaSettings
from producer.sending import Sender, flush_before_sleep
from producer.metrics import ProducerMetrics

log = logging.getLogger(__name__)

PROGRESS_E2E_SAMPLES = 2000  # end-to-end times in the progress file (the latest ones)
PROGRESS_EVERY_S = 0.5  # how often the progress file is rewritten while sending


@dataclass
class SentImage:
    # The message's metadata only: the image bytes are dropped once sent, so a long run
    # holds a few hundred bytes per image, not the images.
    message: dict
    result: ResultMessage | None = None
    result_at: float | None = None
    acked: bool = False
    error: str | None = None


@dataclass
class ProducerRun:
    producer_id: str
    metrics: ProducerMetrics = field(default_factory=ProducerMetrics, repr=False)
    sent: dict[str, SentImage] = field(default_factory=dict)  # every image attempted
    send_errors: int = 0
    acked: int = 0
    resent: int = 0  # sends repeated because the broker's storage refused them (producer/sending.py)
    started_at: float = 0.0
    finished_sending_at: float = 0.0
    results: int = 0  # images whose result came back (counted as they arrive, not recounted)
    # The latest end-to-end times in arrival order, for a supervisor's live percentiles.
    recent_e2e_ms: deque = field(default_factory=lambda: deque(maxlen=PROGRESS_E2E_SAMPLES), repr=False)

    def got_result(self, sent: "SentImage", result: ResultMessage, now: float) -> float:
        """Record ``result`` for ``sent`` (the caller holds the lock); returns e2e in s."""
        sent.result, sent.result_at = result, now
        e2e_s = now - sent.message[SENT_AT]
        self.results += 1
        self.recent_e2e_ms.append(e2e_s * 1000)
        return e2e_s

    def counts(self) -> dict:
        """attempted / acknowledged by the broker / failed (delivery gave up) / results, and
        how many sends were repeated after the broker's storage refused them."""
        return {"attempted": len(self.sent), "acknowledged": self.acked, "failed": self.send_errors,
                "results": self.results, "resent": self.resent}

    def latency_rows(self) -> list[dict]:
        rows = []
        for s in self.sent.values():
            m, r = s.message, s.result
            rows.append({
                **{k: m[k] for k in (IMAGE_ID, DEVICE_ID, PRODUCER_ID, SEQ, LABEL)}, SENT_AT: f"{m[SENT_AT]:.6f}",
                RESULT_AT: f"{s.result_at:.6f}" if s.result_at else None,
                E2E_MS: f"{(s.result_at - m[SENT_AT]) * 1000:.3f}" if s.result_at else None,
                PREDICTION: getattr(r, PREDICTION, None), MODEL: getattr(r, MODEL, None)})
        return rows

    def stage_rows(self) -> list[dict]:
        rows = []
        for s in self.sent.values():
            r = s.result
            rows.append({IMAGE_ID: s.message[IMAGE_ID], SENT_AT: s.message[SENT_AT],
                         **{k: getattr(r, k, None) for k in (RECEIVED_AT, INFERRED_AT, PUBLISHED_AT)},
                         RESULT_AT: s.result_at, STORED_AT: None})
        return rows


class ResultListener(threading.Thread):
    """Reads its own partition of the results topic (no consumer group; results are keyed
    by producer id, common.kafka_io.key_partition)."""

    def __init__(self, settings: KafkaSettings, run: ProducerRun):
        super().__init__(name="result-listener", daemon=True)
        self.run_state = run
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.settings = settings
        self.consumer = None
        self.topic = settings.results_topic

    def _assign(self) -> None:
        deadline = time.monotonic() + self.settings.kafka_delivery_timeout_s
        while self.consumer is None:  # the broker may be away at start: retry, do not crash
            try:
                # Fetch long-poll: KAFKA_FETCH_MAX_WAIT_MS (the broker answers as soon as a
                # result is there, so a longer wait adds no latency, only fewer idle fetches).
                self.consumer = make_consumer(self.settings, group_id=None, auto_offset_reset="latest")
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("result listener: broker unreachable (%s); retrying", exc)
                time.sleep(1.0)
        partitions = None
        while not partitions:
            partitions = self.consumer.partitions_for_topic(self.topic)
            if not partitions:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"results topic {self.topic!r} does not exist")
                time.sleep(0.2)
        # Only the partition this producer's results go to (results are keyed by producer id).
        partitions = [key_partition(self.run_state.producer_id.encode(), list(partitions))]
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        log.debug("result listener: reading %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps))
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, before the first image is sent
            self.consumer.position(tp)

    def run(self) -> None:
        try:
            self._assign()
        except Exception as exc:  # noqa: BLE001 - no results then; the sends still go on
            log.error("result listener: %s; no results will be received", exc)
            self.ready.set()
            return
        finally:
            self.ready.set()
        mine = self.run_state.producer_id
        # Other producers' results on this partition are skipped by the producer_id header,
        # without parsing them; the parsed producer_id is still checked below.
        mine_header = mine.encode()
        while not self.stop_event.is_set():
            batches = self.consumer.poll(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for record in records:
                    header = next((v for k, v in record.headers or () if k == RESULT_PRODUCER_HEADER), None)
                    if header != mine_header:
                        continue
                    try:
                        result = parse_result_message(record.value)  # the contract's result, validated
                    except InvalidMessage:
                        continue  # the DB consumer dead-letters it; a producer only times its own
                    if result.producer_id != mine:
                        continue
                    with self.lock:
                        sent = self.run_state.sent.get(result.image_id)
                        if sent is not None and sent.result_at is None:  # first result wins
                            self.run_state.metrics.result(self.run_state.got_result(sent, result, now))
        self.consumer.close()


def new_producer_id() -> str:
    return f"p-{uuid.uuid4().hex[:6]}"


def write_progress(path: Path | None, run: ProducerRun, count: int, done: bool = False) -> None:
    """A small JSON file a supervising process (the experiment runner) can watch.
    ``sent`` counts the images the broker acknowledged, not the attempts; ``e2e_ms`` the
    latest end-to-end times (PROGRESS_E2E_SAMPLES), in arrival order.  Its cost does not
    grow with the run: those times are kept as they arrive (ProducerRun.recent_e2e_ms, a
    bounded deque), so writing the file sorts or scans nothing."""
    if path is None:
        return
    progress = {"producer_id": run.producer_id, "count": count, "sent": run.acked, "attempted": len(run.sent),
                "failed": run.send_errors, "results": run.results, "done": done,
                "e2e_ms": [round(v, 3) for v in list(run.recent_e2e_ms)]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(progress))
    tmp.replace(path)


def _messages(dataset, producer_id: str, count: int, devices: int, schema: int = 2):
    """The run's ``(message, image file)`` pairs, each image encoded (CIFAR: a 32x32 PNG, well
    under a millisecond) or read (a folder's file) as it is sent, so memory does not grow
    with the run's length.  A folder's file that can no longer be read or is no longer an
    image (replaced since the folder was loaded) is skipped with a warning and the next
    one sent instead; only when no file of the folder can be sent does the run stop."""
    # Each producer starts at its own place in the dataset, so that concurrent
    # producers do not all send the same first images.
    start = zlib.crc32(producer_id.encode()) % len(dataset)
    seq, i, failed_in_a_row = 0, start, 0
    while seq < count:
        idx = i % len(dataset)
        i += 1
        try:
            image, fmt = dataset.encoded(idx)
            msg = make_image_message(image=image, format=fmt, device_id=f"{producer_id}-cam{seq % devices:02d}",
                                     producer_id=producer_id, seq=seq, label=dataset.labels[idx],
                                     dataset=dataset.name, schema=schema)
        except (OSError, InvalidMessage) as exc:
            failed_in_a_row += 1
            log.warning("skipping image %d of the dataset (%s): %s", idx,
                        dataset.files[idx] if dataset.files is not None else dataset.name, exc)
            if failed_in_a_row >= len(dataset):
                raise DatasetUnavailable(f"no image of {dataset.source} can be sent any more "
                                         f"(the last: {exc})") from None
            continue
        failed_in_a_row = 0
        yield msg, image
        seq += 1


def encode_record(msg: dict, image: bytes, schema: int) -> tuple[bytes, list | None]:
    """``(value, headers)`` to send for a stamped message: schema 2 the image file with the
    metadata in headers, schema 1 the JSON message (``image`` in base64 inside)."""
    if schema == IMAGE_SCHEMA_JSON:
        return dumps(msg), None
    return image_record(msg, image)


def run_cameras(run: ProducerRun, *, kafka: KafkaSettings, dataset, count: int, rate: float,
                devices: int, result_timeout_s: float, progress: bool = True,
                progress_file: Path | None = None, image_schema: int = 2) -> ProducerRun:
    """Send ``count`` images at ``rate`` images/s and wait for their results, recording
    everything into ``run`` as it happens (the caller writes the run files even if this
    raises).  ``image_schema``: the image messages' schema (IMAGE_SCHEMA, common/schema.py)."""
    producer_id = run.producer_id
    listener = ResultListener(kafka, run)
    listener.start()
    listener.ready.wait(kafka.kafka_delivery_timeout_s + 5)

    def acked(image_id):
        with listener.lock:
            run.sent[image_id].acked = True
            run.acked += 1
        run.metrics.image_acked()

    def failed(exc, image_id):
        with listener.lock:
            run.sent[image_id].error = f"{type(exc).__name__}: {exc}"
            run.send_errors += 1
        run.metrics.image_failed()
        log.error("send of %s failed: %s", image_id, exc)

    sender = Sender(kafka, kafka.images_topic, acked, failed, on_sent=run.metrics.image_sent)
    producer = sender.producer
    bar = tqdm(total=count, desc=f"{producer_id} sent", unit="img", disable=not progress,
               mininterval=0.5)
    run.started_at = start = time.time()
    next_progress = time.monotonic()
    # Images due within one linger window are handed over together: kafka-python holds a
    # record until its batch's linger ends anyway, so they leave in the same requests as
    # with exact pacing, and the loop wakes once per window instead of once per image.  A
    # wake-up costs far more CPU than the work after it on a busy 2-core VM (measured:
    # encoding and stamping an image 0.20 core-ms back to back, 0.67 after a 12.5 ms sleep).
    # sent_at is stamped at the hand-over, so an image sent early is timed from then.
    # Ahead of schedule, the window's records are flushed before the sleep (below), so
    # they do not also wait out the linger; behind schedule there is no sleep to shorten,
    # and the linger batches them.
    window_s = kafka.kafka_linger_ms / 1000
    flush_after_acks = 0  # flush before a sleep once this many images are acknowledged
    try:
        for seq, (msg, image) in enumerate(_messages(dataset, producer_id, count, devices, image_schema)):
            delay = start + seq / rate - time.time()
            if delay > window_s:
                if producer is not None and run.acked >= flush_after_acks:
                    if not flush_before_sleep(producer, delay):
                        flush_after_acks = run.acked + 1  # the broker is slow or away: wait for an ack
                    delay = start + seq / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            msg[SENT_AT] = time.time()
            value, headers = encode_record(msg, image, image_schema)
            image_id = msg[IMAGE_ID]
            with listener.lock:
                run.sent[image_id] = SentImage({k: v for k, v in msg.items() if k != IMAGE})
            # The image waits in the sender's buffer until the broker acknowledges it or it
            # fails; with the buffer full (the broker away for long) it is counted as failed.
            sender.send(image_id, msg[DEVICE_ID].encode(), value, headers)
            sender.resend_due()
            bar.update(1)
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY_S
                bar.set_postfix(results=run.results, refresh=False)
                write_progress(progress_file, run, count)
    except DatasetUnavailable as exc:  # every file of a folder gone: send no more, keep what was sent
        log.error("%s; stopping after %d of %d images", exc, len(run.sent), count)
    sender.close()
    run.resent = sender.resent
    run.finished_sending_at = time.time()
    bar.close()

    deadline = time.monotonic() + result_timeout_s
    with tqdm(total=count, initial=run.results, desc=f"{producer_id} results", unit="img",
              disable=not progress, mininterval=0.5) as wait_bar:
        while run.results < len(run.sent) - run.send_errors and time.monotonic() < deadline:
            time.sleep(0.1)
            wait_bar.update(run.results - wait_bar.n)
            write_progress(progress_file, run, count)
    listener.stop_event.set()
    listener.join(10)
    write_progress(progress_file, run, count, done=True)
    if run.results < count:
        log.error("%s: %d of %d results did not come back within %.0f s",
                  producer_id, count - run.results, count, result_timeout_s)
    return run


def write_run_files(run: ProducerRun, out_dir: Path) -> None:
    """latencies.csv and stages.csv (every image attempted: one the broker never
    acknowledged has no result and counts as lost), and producer.json with the counts."""
    files = RunDir(out_dir)
    files.write_latencies(run.latency_rows())
    files.write_stages(run.stage_rows())
    failed = {image_id: s.error for image_id, s in run.sent.items() if s.error}
    (out_dir / "producer.json").write_text(json.dumps(
        {"producer_id": run.producer_id, **run.counts(), "failed_images": failed}, indent=1) + "\n")
