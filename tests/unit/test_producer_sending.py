"""The producer's sends (producer/sending.py): the bound on unacknowledged images, and
an image the broker's storage refused sent again until its delivery timeout."""

from __future__ import annotations

import threading

import pytest
from kafka.errors import MessageSizeTooLargeError, UnknownError
from kafka.future import Future

import producer.sending as sending
from common.settings import KafkaSettings
from producer.sending import Sender, SendBuffer


def test_an_image_that_finds_no_room_in_time_is_refused_and_takes_nothing():
    buf = SendBuffer(100)
    assert buf.reserve(60, 0) and buf.reserve(40, 0)
    assert not buf.reserve(1, 0.05)
    assert buf.used == 100
    buf.release(60)
    assert buf.reserve(50, 0) and buf.used == 90


def test_a_waiting_image_goes_as_soon_as_an_acknowledgement_frees_room():
    buf = SendBuffer(10)
    assert buf.reserve(10, 0)
    threading.Timer(0.1, buf.release, args=(10,)).start()
    # The hang guard only: it returns when the release comes, whatever the host's speed.
    assert buf.reserve(5, 30)
    assert buf.used == 5


def test_an_image_bigger_than_the_whole_buffer_goes_alone():
    buf = SendBuffer(10)
    assert buf.reserve(25, 0) and not buf.reserve(1, 0)
    buf.release(25)
    assert buf.used == 0 and buf.reserve(1, 0)


def test_releases_from_another_thread_are_counted_once_each():
    buf = SendBuffer(1000)
    for _ in range(100):
        assert buf.reserve(10, 0)
    threads = [threading.Thread(target=buf.release, args=(10,)) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert buf.used == 0


class FakeProducer:
    """Answers each send with what ``answers`` says next (None: acknowledged), at once or
    when the test calls ``complete``."""

    def __init__(self, answers):
        self.answers, self.sent, self.open = list(answers), [], []

    def send(self, topic, key=None, value=None, headers=None):
        future = Future()
        self.sent.append(value)
        self.open.append((future, self.answers.pop(0) if self.answers else None))
        return future

    def complete(self):
        while self.open:
            future, answer = self.open.pop(0)
            future.failure(answer) if answer is not None else future.success("metadata")

    def flush(self, timeout=None):
        self.complete()

    def close(self, timeout=None):
        pass


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(sending, "RESEND_BACKOFF_S", (0.0, 0.0))


def _sender(monkeypatch, answers, timeout_s=120.0):
    fake = FakeProducer(answers)
    monkeypatch.setattr(sending, "make_producer", lambda kafka: fake)
    outcomes = []
    kafka = KafkaSettings(kafka_delivery_timeout_s=timeout_s)
    sender = Sender(kafka, "images", on_acked=lambda i: outcomes.append(("acked", i)),
                    on_failed=lambda exc, i: outcomes.append((type(exc).__name__, i)))
    return sender, fake, outcomes


def test_an_image_the_broker_storage_refused_is_sent_again_and_acknowledged_once(monkeypatch, no_backoff):
    sender, fake, outcomes = _sender(monkeypatch, [UnknownError("storage"), UnknownError("storage")])
    sender.send("a", b"k", b"v" * 10, None)
    fake.complete()
    assert outcomes == [] and sender.pending_resends() == 1  # not counted failed: waiting to go again
    sender.close()  # flushes, sends the due ones again until none is left
    assert outcomes == [("acked", "a")] and fake.sent == [b"v" * 10] * 3 and sender.resent == 2
    assert sender.buffer.used == 0


def test_a_refusal_past_the_delivery_timeout_counts_failed(monkeypatch):
    sender, fake, outcomes = _sender(monkeypatch, [UnknownError("storage")] * 50, timeout_s=0.3)
    sender.send("a", b"k", b"v", None)
    sender.close()
    assert outcomes == [("UnknownError", "a")] and len(fake.sent) >= 1 and sender.buffer.used == 0


def test_an_error_about_the_record_itself_is_not_sent_again(monkeypatch, no_backoff):
    sender, fake, outcomes = _sender(monkeypatch, [MessageSizeTooLargeError("too big")])
    sender.send("a", b"k", b"v", None)
    sender.close()
    assert outcomes == [("MessageSizeTooLargeError", "a")] and len(fake.sent) == 1


def test_resends_wait_for_the_camera_loop_not_the_io_thread(monkeypatch, no_backoff):
    sender, fake, outcomes = _sender(monkeypatch, [UnknownError("storage")])
    sender.send("a", b"k", b"v", None)
    fake.complete()  # the errback (kafka-python's I/O thread) only queues it
    assert len(fake.sent) == 1
    sender.resend_due()
    fake.complete()
    assert len(fake.sent) == 2 and outcomes == [("acked", "a")]
