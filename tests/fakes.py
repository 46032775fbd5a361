"""Fakes the unit tests share: an in-memory Kafka consumer and producer with a fake clock,
valid image and result messages, and hooks that stop a consumer's loop.

``FakeConsumer`` implements exactly the KafkaConsumer methods the consumers call
(poll, commit, seek, pause, resume, paused, assignment, position, close) with
kafka-python's own TopicPartition, OffsetAndMetadata and ConsumerRecord, and the
same argument checks as kafka-python 3.0 (seek/pause of an unassigned partition
fails, commit wants dict[TopicPartition, OffsetAndMetadata]).  A rebalance is
simulated inside poll(), where kafka-python runs it: revoked partitions lose their
state, newly assigned ones start unpaused at the group's committed offset.

Time is a fake clock in place of ``consumers.batching.time`` (the ``clock`` fixture of
tests/unit/conftest.py; whole milliseconds, so deadlines are exact): an empty poll lasts
its whole timeout, a poll that returns records lasts ``fetch_ms``.  Nothing sleeps.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from common.deadletter import read_dead_letter
from common.schema import dumps, encode_png, make_image_message, make_result_message
from common.settings import KafkaSettings

IMAGES, RESULTS, DLQ = "t-images", "t-results", "t-dlq"
P0, P1, P2 = (TopicPartition(IMAGES, p) for p in range(3))
R0 = TopicPartition(RESULTS, 0)  # same partition number as P0, other topic


def oam(offset: int) -> OffsetAndMetadata:
    return OffsetAndMetadata(offset, "", -1)


def keys(records) -> list:
    return [(r.topic, r.partition, r.offset) for r in records]


def span(tp: TopicPartition, start: int, stop: int) -> list:
    return [(tp.topic, tp.partition, o) for o in range(start, stop)]


def values(n: int) -> list:
    return [b"v%d" % i for i in range(n)]


class FakeClock:
    """Replaces the ``time`` module in consumers.batching (monotonic(), and sleep() while the
    broker is away)."""

    def __init__(self, start_ms: int = 64_000):
        self.ms = start_ms

    def monotonic(self) -> float:
        return self.ms / 1000

    def advance_ms(self, ms: int) -> None:
        self.ms += int(ms)

    def sleep(self, seconds: float) -> None:
        self.advance_ms(seconds * 1000)


class FakeConsumer:
    """In-memory KafkaConsumer: partition logs, positions, pauses, commits, rebalances."""

    def __init__(self, clock: FakeClock, logs: dict, *, committed: dict | None = None,
                 assigned=None, fetch_ms: int = 0, max_poll_records: int = 500):
        self.clock, self.fetch_ms, self.max_poll_records = clock, fetch_ms, max_poll_records
        self.logs = {tp: list(v) for tp, v in logs.items()}
        self.visible = {tp: len(v) for tp, v in self.logs.items()}  # what poll may return, per partition
        self.committed_offsets = dict(committed or {})
        self._assigned = set(self.logs if assigned is None else assigned)
        self._paused: set = set()
        self._position = {tp: self.committed_offsets.get(tp, 0) for tp in self._assigned}
        self.hooks: list = []   # hook(consumer, poll_index), run inside poll before fetching
        self.polls: list = []   # per poll: timeout_ms, max_records, assigned/paused at the call, returned
        self.commits: list = []
        self.seeks: list = []
        self.calls: list = []   # (name, detail) in order; the fakes of other dependencies append too
        self.commit_error: Exception | None = None
        self.closed = False
        self.created_ms: dict = {}  # (partition, offset) -> the record's CreateTime (ms); 0 when absent

    # -- the KafkaConsumer API
    def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
        index = len(self.polls)
        assigned, paused = set(self._assigned), set(self._paused)
        for hook in list(self.hooks):
            hook(self, index)
        limit = self.max_poll_records if max_records is None else max_records
        out, taken = {}, 0
        for tp in sorted(self._assigned - self._paused):
            pos = self._position[tp]
            n = min(self.visible.get(tp, 0) - pos, limit - taken)
            if n > 0:
                out[tp] = [ConsumerRecord(tp.topic, tp.partition, -1, o, self.created_ms.get((tp, o), 0), 0, None,
                                          self.logs[tp][o],
                                          [], None, -1, len(self.logs[tp][o]), -1)
                           for o in range(pos, pos + n)]
                self._position[tp] = pos + n
                taken += n
        self.polls.append({"timeout_ms": timeout_ms, "max_records": max_records,
                           "assigned": assigned, "paused": paused, "returned": taken})
        self.calls.append(("poll", taken))
        self.clock.advance_ms(self.fetch_ms if taken else timeout_ms)
        return out

    def commit(self, offsets=None, timeout_ms=None):
        if offsets is None:
            raise TypeError("this fake expects explicit offsets (the consumers never commit positions)")
        if not all(isinstance(k, TopicPartition) for k in offsets) or \
           not all(isinstance(v, OffsetAndMetadata) for v in offsets.values()):
            raise TypeError("offsets must be dict[TopicPartition, OffsetAndMetadata]")
        self.calls.append(("commit", dict(offsets)))
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(dict(offsets))
        for tp, om in offsets.items():
            self.committed_offsets[tp] = om.offset

    def seek(self, partition, offset):
        if not isinstance(partition, TopicPartition):
            raise TypeError("partition must be a TopicPartition namedtuple")
        if not isinstance(offset, int) or offset < 0:
            raise ValueError("Offset must be int >= 0")
        if partition not in self._assigned:
            raise ValueError("Unassigned partition")
        self.calls.append(("seek", (partition, offset)))
        self.seeks.append((partition, offset))
        self._position[partition] = offset

    def pause(self, *partitions):
        self._check(partitions)
        self.calls.append(("pause", set(partitions)))
        self._paused.update(partitions)

    def resume(self, *partitions):
        self._check(partitions)
        self.calls.append(("resume", set(partitions)))
        self._paused.difference_update(partitions)

    def paused(self):
        return set(self._paused)

    def assignment(self):
        return set(self._assigned)

    def position(self, partition, timeout_ms=None):
        return self._position[partition]

    def close(self, autocommit=True, timeout_ms=None):
        self.closed = True

    def _check(self, partitions):
        if not all(isinstance(p, TopicPartition) for p in partitions):
            raise TypeError("partitions must be TopicPartition namedtuples")
        for p in partitions:
            if p not in self._assigned:
                raise KeyError(p)  # kafka-python: SubscriptionState.assignment[partition]

    # -- test controls
    def rebalance(self, revoke=(), assign=()):
        for tp in revoke:
            self._assigned.discard(tp)
            self._paused.discard(tp)
            self._position.pop(tp, None)
        for tp in assign:
            if tp not in self._assigned:
                self._assigned.add(tp)
                self._position[tp] = self.committed_offsets.get(tp, 0)

    def arrive(self, tp, n=1):
        self.visible[tp] = min(len(self.logs[tp]), self.visible[tp] + n)

    def names(self) -> list:
        return [name for name, _ in self.calls]


def at_poll(index, action):
    """A hook running ``action(consumer)`` inside the poll with that index."""
    def hook(consumer, i):
        if i == index:
            action(consumer)
    return hook


def assert_liveness_polls_only(polls):
    """Polls made while an effect runs: every partition paused, nothing returned."""
    assert polls, "expected liveness polls"
    for p in polls:
        assert p["paused"] == p["assigned"] and p["returned"] == 0, p


def kafka_settings() -> KafkaSettings:
    return KafkaSettings(images_topic=IMAGES, results_topic=RESULTS, dlq_topic=DLQ)


PNG = encode_png(np.zeros((32, 32, 3), dtype=np.uint8))


def image_value(seq: int) -> bytes:
    msg = make_image_message(image=PNG, device_id="dev", producer_id="prod", seq=seq, label=None,
                             dataset="test")
    return dumps({**msg, "sent_at": 1.0})


def result_value(seq: int) -> bytes:
    image = {**make_image_message(image=PNG, device_id="dev", producer_id="prod", seq=seq, label=None,
                                  dataset="test"), "sent_at": 1.0}
    result = make_result_message(image, prediction="cat", confidence=0.5, model="m",
                                 received_at=1.0, inferred_at=1.0)
    return dumps({**result, "published_at": 1.0})  # stamped at the send, as consumers.inference does


def stop_when_drained(stop):
    """Stop the consumer at its first ordinary (unpaused) poll with nothing left to read."""
    def hook(c, _i):
        if not c.paused() and all(c.position(tp) >= c.visible[tp] for tp in c.assignment()):
            stop.set()
    return hook


def stop_after_paused_polls(stop, n):
    seen = []

    def hook(c, _i):
        if c.assignment() and c.paused() == c.assignment():
            seen.append(1)
            if len(seen) >= n:
                stop.set()
    return hook


class FakeSendFuture:
    def __init__(self, exception=None):
        self.exception = exception

    def failed(self):
        return self.exception is not None


class FakeProducer:
    def __init__(self, calls, fail_batches=0):
        self.calls, self.fail_batches, self.sent = calls, fail_batches, []

    def send(self, topic, key=None, value=None, headers=None):
        self.calls.append(("send", topic))
        self.sent.append((topic, value))
        return FakeSendFuture(KafkaTimeoutError("not delivered") if self.fail_batches else None)

    def flush(self, timeout=None):
        self.calls.append(("flush", None))
        self.fail_batches = max(0, self.fail_batches - 1)

    def close(self, timeout=None):
        pass


class RecordingProducer(FakeProducer):
    """FakeProducer that also keeps each record (key and headers too), as the topic would:
    a dead letter's reason and origin are in its headers."""

    def __init__(self, calls, fail_batches=0):
        super().__init__(calls, fail_batches)
        self.records: list = []

    def send(self, topic, key=None, value=None, headers=None):
        self.records.append(SimpleNamespace(topic=topic, partition=0, offset=len(self.records), key=key,
                                            value=value, headers=list(headers or [])))
        return super().send(topic, key=key, value=value, headers=headers)


def dead_letters(producer: RecordingProducer) -> list:
    """The dead letters sent, read as the DLQ's readers read them (common.deadletter)."""
    return [read_dead_letter(r) for r in producer.records if r.topic == DLQ]


# Ends a consumer loop that would retry forever so that its test fails on its assertions
# instead of hanging; far more paused polls than any retry of these tests makes.
GUARD_PAUSED_POLLS = 500


def image_id_of(value: bytes) -> str:
    """The image id of a schema-1 image (or result) message value."""
    return json.loads(value)["image_id"]


def origin(d) -> tuple:
    """Where a dead letter came from: (topic, partition, offset)."""
    return d.source_topic, d.source_partition, d.source_offset


def poison(monkeypatch, bad: dict):
    """Make parse_image_record hand the DB consumer a value BSON cannot encode for the
    images whose seq is a key of ``bad`` (a gap in the schema's checks, simulated)."""
    from consumers import db

    real = db.parse_image_record

    def parse(value, headers=None, **kwargs):
        msg, png = real(value, headers, **kwargs)
        return ({**msg, **bad[msg["seq"]]} if msg["seq"] in bad else msg), png

    monkeypatch.setattr(db, "parse_image_record", parse)
