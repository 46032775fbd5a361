"""Handing a camera's images to the Kafka client, and what happens to each until the
broker acknowledged it or it counts as failed.

:class:`Sender` bounds the bytes held unacknowledged (Kafka's ``buffer.memory``, which
kafka-python 3 does not have: :class:`SendBuffer`), retries a broker that is away until
the delivery timeout, and sends again an image whose write the broker's storage failed.
The broker answers such a write ``UNKNOWN_SERVER_ERROR`` (tansu when its S3 storage
refused or cut the write) or ``KAFKA_STORAGE_ERROR``; kafka-python does not retry the
first, and the image itself is fine, so the sender does, with a backoff, until the
image's delivery timeout.  A resent image may reach the topic twice (the first write may
have landed after all) and after its camera's next images; the DB writer stores an image
once whatever the order, so at-least-once is enough.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import Callable

from kafka.errors import KafkaError, KafkaStorageError, KafkaTimeoutError, UnknownError

from common.kafka_io import make_producer
from common.settings import KafkaSettings

log = logging.getLogger(__name__)

# The broker's storage failed the write; the image is fine and may be sent again.
RESEND_ERRORS = (UnknownError, KafkaStorageError)
RESEND_BACKOFF_S = (0.5, 5.0)  # first wait, longest wait (doubling in between)


class SendBuffer:
    """Bytes handed to the Kafka client and neither acknowledged nor failed yet.  While
    the broker is away the images wait in it; an image that finds no room within the wait
    is the caller's to count as failed."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def reserve(self, size: int, timeout_s: float) -> bool:
        """Take ``size`` bytes, waiting up to ``timeout_s`` for room; False if there was none.
        An image larger than the whole buffer still goes when the buffer is empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + size <= self.capacity,
                                       timeout_s):
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        """Give back what an image took, once the broker acknowledged it or it failed."""
        with self._cond:
            self.used = max(0, self.used - size)
            self._cond.notify_all()


def connect(kafka: KafkaSettings, deadline: float):
    """A producer, retrying while the broker is away until ``deadline`` (None: gave up)."""
    delay = 0.5
    while True:
        try:
            return make_producer(kafka)
        except KafkaError as exc:
            if time.monotonic() + delay > deadline:
                log.error("broker unreachable (%s); giving up after the delivery timeout", exc)
                return None
            log.warning("broker unreachable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def flush_before_sleep(producer, delay_s: float) -> bool:
    """Send the records handed over so far now instead of after their batch's linger, when
    the loop is about to sleep ``delay_s`` anyway (ahead of schedule): at light load the
    linger would add its whole length to every image's time (all of a window's images are
    handed over together) and batch nothing more.  True when every record was acknowledged.

    kafka-python applies the timeout to each unacknowledged batch in turn, so a broker
    that does not answer can hold this for several ``delay_s``: after a False the caller
    does not flush again until an acknowledgement arrives.  Records not acknowledged stay
    queued (the delivery timeout and the send callbacks still govern them)."""
    try:
        producer.flush(timeout=delay_s)
        return True
    except KafkaError:  # KafkaTimeoutError: not acknowledged yet; a failed send has its errback
        return False


class Sender:
    """One producer's sends.  ``on_acked(image_id)`` and ``on_failed(exc, image_id)`` are
    called once per image, from kafka-python's I/O thread or the caller's."""

    def __init__(self, kafka: KafkaSettings, topic: str, on_acked: Callable, on_failed: Callable,
                 on_sent: Callable = lambda: None):
        self.kafka, self.topic = kafka, topic
        self.on_acked, self.on_failed, self.on_sent = on_acked, on_failed, on_sent
        self.timeout_s = kafka.kafka_delivery_timeout_s
        # A broker outage is retried until the delivery timeout (kafka-python's own retries
        # cover a send in flight; this covers the broker being away before or between sends).
        self.deadline = time.monotonic() + self.timeout_s
        self.producer = connect(kafka, self.deadline)
        self.buffer = SendBuffer(kafka.kafka_producer_buffer_bytes)
        self._due: list[tuple] = []  # heap of (when, n, image_id, key, value, headers, first_at, attempt)
        self._n = 0
        self._lock = threading.Lock()
        self.resent = 0
        self.closing = False  # past the last flush: a refusal now counts failed, nobody would resend

    def send(self, image_id: str, key: bytes, value: bytes, headers, first_at: float | None = None,
             attempt: int = 1) -> None:
        """Hand one image to the client, waiting for room in the buffer and for a broker
        that is away, at most until the delivery timeout; what cannot go is counted failed."""
        first_at = time.monotonic() if first_at is None else first_at
        size = len(value)
        while self.producer is not None:
            if not self.buffer.reserve(size, self.kafka.kafka_max_block_ms / 1000):
                self.on_failed(KafkaTimeoutError(
                    f"producer buffer full: {self.buffer.used} of {self.buffer.capacity} bytes "
                    f"not acknowledged for {self.kafka.kafka_max_block_ms} ms"), image_id)
                return
            record = (image_id, key, value, headers, first_at, attempt)
            try:
                self.producer.send(self.topic, key=key, value=value, headers=headers) \
                    .add_callback(self._acked, image_id, size) \
                    .add_errback(self._failed, record, size)
                if attempt == 1:
                    self.on_sent()
                break
            except KafkaError as exc:  # metadata unavailable: the broker is away
                self.buffer.release(size)
                if time.monotonic() > self.deadline:
                    self.on_failed(exc, image_id)
                    return
                log.warning("send of %s: %s; retrying", image_id, exc)
                time.sleep(1.0)
        else:
            self.on_failed(KafkaTimeoutError("no connection to the broker"), image_id)
            return
        if time.monotonic() <= self.deadline:
            self.deadline = time.monotonic() + self.timeout_s

    def _acked(self, image_id: str, size: int, _metadata) -> None:
        self.buffer.release(size)
        self.on_acked(image_id)

    def _failed(self, record: tuple, size: int, exc: Exception) -> None:
        # kafka-python's I/O thread: it must not send, so a resend waits for the camera loop.
        self.buffer.release(size)
        image_id, key, value, headers, first_at, attempt = record
        wait = min(RESEND_BACKOFF_S[0] * 2 ** (attempt - 1), RESEND_BACKOFF_S[1])
        if (isinstance(exc, RESEND_ERRORS) and not self.closing
                and time.monotonic() + wait < first_at + self.timeout_s):
            log.warning("send of %s refused by the broker (%s, attempt %d); sending it again in %.1f s",
                        image_id, exc, attempt, wait)
            with self._lock:
                self._n += 1
                heapq.heappush(self._due, (time.monotonic() + wait, self._n, image_id, key, value, headers,
                                           first_at, attempt + 1))
            return
        self.on_failed(exc, image_id)

    def resend_due(self) -> None:
        """Send again the refused images whose backoff is over (the camera loop calls this)."""
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > time.monotonic():
                    return
                _, _, *record = heapq.heappop(self._due)
            self.resent += 1
            self.send(*record)

    def pending_resends(self) -> int:
        with self._lock:
            return len(self._due)

    def close(self) -> None:
        """Wait until every image was acknowledged or failed, resends included, then close."""
        if self.producer is None:
            return
        while True:
            try:
                self.producer.flush(timeout=self.timeout_s)
            except KafkaError as exc:
                log.error("flush: %s", exc)
            with self._lock:
                next_at = self._due[0][0] if self._due else None
            if next_at is None:
                break
            time.sleep(max(0.0, next_at - time.monotonic()))
            self.resend_due()
        self.closing = True
        self.producer.close(timeout=10)
        with self._lock:  # refused after the last check (the flush had timed out): not sent again
            left, self._due = self._due, []
        for _, _, image_id, *_ in left:
            self.on_failed(UnknownError("refused by the broker and not sent again: the producer is closing"),
                           image_id)
