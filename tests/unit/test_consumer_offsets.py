"""The consumers' offset logic (consumers/batching.py) against an in-memory consumer.

``FakeConsumer`` implements exactly the KafkaConsumer methods the consumers call
(poll, commit, seek, pause, resume, paused, assignment, position, close) with
kafka-python's own TopicPartition, OffsetAndMetadata and ConsumerRecord, and the
same argument checks as kafka-python 3.0 (seek/pause of an unassigned partition
fails, commit wants dict[TopicPartition, OffsetAndMetadata]).  A rebalance is
simulated inside poll(), where kafka-python runs it: revoked partitions lose their
state, newly assigned ones start unpaused at the group's committed offset.

Time is a fake clock in place of ``consumers.batching.time`` (whole milliseconds,
so deadlines are exact): an empty poll lasts its whole timeout, a poll that returns
records lasts ``fetch_ms``.  Nothing here sleeps or compares elapsed time.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from common.schema import dumps, encode_png, make_image_message, make_result_message
from common.settings import InferenceClientSettings, KafkaSettings, MongoSettings
from consumers import batching

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
    """Replaces the ``time`` module in consumers.batching, which only calls monotonic()."""

    def __init__(self, start_ms: int = 64_000):
        self.ms = start_ms

    def monotonic(self) -> float:
        return self.ms / 1000

    def advance_ms(self, ms: int) -> None:
        self.ms += int(ms)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(batching, "time", c)
    return c


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


# ---------------------------------------------------------------- gather

def test_gather_with_nothing_to_read_polls_once_with_the_idle_timeout(clock):
    c = FakeConsumer(clock, {P0: values(2)})
    c.visible[P0] = 0
    c.hooks.append(at_poll(1, lambda c: c.arrive(P0, 2)))  # would arrive on a second poll
    assert batching.gather(c, max_records=8, wait_ms=250, idle_timeout_ms=500) == []
    assert [(p["timeout_ms"], p["max_records"]) for p in c.polls] == [(500, 8)]
    assert c.position(P0) == 0
    assert keys(batching.gather(c, max_records=8, wait_ms=0)) == span(P0, 0, 2)


def test_gather_stops_at_max_records_without_waiting(clock):
    c = FakeConsumer(clock, {P0: values(10)})
    assert keys(batching.gather(c, max_records=4, wait_ms=10_000)) == span(P0, 0, 4)
    assert len(c.polls) == 1 and clock.ms == 64_000  # a full batch does not wait for wait_ms
    assert c.position(P0) == 4
    assert keys(batching.gather(c, max_records=4, wait_ms=10_000)) == span(P0, 4, 8)


def test_gather_asks_each_poll_only_for_the_records_still_missing(clock):
    c = FakeConsumer(clock, {P0: values(9)})
    c.visible[P0] = 2
    c.hooks.append(lambda c, i: c.arrive(P0, 2) if i else None)  # two more before every later poll
    batch = batching.gather(c, max_records=5, wait_ms=10_000)
    assert keys(batch) == span(P0, 0, 5)
    assert [p["max_records"] for p in c.polls] == [5, 3, 1]
    assert c.position(P0) == 5  # the sixth record, already visible, is left for the next batch


def test_gather_waits_at_most_wait_ms_after_the_first_record(clock):
    c = FakeConsumer(clock, {P0: values(3)}, fetch_ms=125)
    c.visible[P0] = 1
    c.hooks.append(at_poll(1, lambda c: c.arrive(P0)))
    c.hooks.append(at_poll(3, lambda c: c.arrive(P0)))  # only after the deadline: not in this batch
    batch = batching.gather(c, max_records=8, wait_ms=250, idle_timeout_ms=500)
    assert keys(batch) == span(P0, 0, 2)
    # first record at 64.125 s -> deadline 64.375 s; each later poll gets what is left of it
    assert [p["timeout_ms"] for p in c.polls] == [500, 250, 125]
    assert clock.ms == 64_375
    assert c.position(P0) == 2


def test_gather_counts_wait_ms_from_when_the_oldest_record_was_produced(clock, monkeypatch):
    monkeypatch.setattr(batching, "wall_time", lambda: 1_000.0)
    c = FakeConsumer(clock, {P0: values(5)})
    c.visible[P0] = 2
    c.created_ms = {(P0, 0): 999_875, (P0, 1): 999_950, (P0, 3): 999_000, (P0, 4): 1_005_000}

    def timeouts(max_records=8):
        before = len(c.polls)
        batch = batching.gather(c, max_records=max_records, wait_ms=250, idle_timeout_ms=500)
        return keys(batch), [p["timeout_ms"] for p in c.polls[before:]]

    # The oldest was produced 125 ms ago: 125 ms more, not 250.
    assert timeouts() == (span(P0, 0, 2), [500, 125])
    c.arrive(P0)  # no timestamp: the whole wait_ms
    assert timeouts() == (span(P0, 2, 3), [500, 250])
    c.arrive(P0)  # a second old: its batch goes at once
    assert timeouts() == (span(P0, 3, 4), [500])
    c.arrive(P0)  # a producer clock ahead of ours never lengthens the wait
    assert timeouts() == (span(P0, 4, 5), [500, 250])


def test_gather_with_zero_wait_returns_what_the_first_poll_brought(clock):
    c = FakeConsumer(clock, {P0: values(3)})
    c.visible[P0] = 1
    c.hooks.append(at_poll(1, lambda c: c.arrive(P0, 2)))
    assert keys(batching.gather(c, max_records=8, wait_ms=0)) == span(P0, 0, 1)
    assert len(c.polls) == 1


def test_gather_reads_every_partition_and_topic_and_only_polls(clock):
    c = FakeConsumer(clock, {P0: values(2), P1: values(1), R0: values(3)})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    assert sorted(keys(batch)) == sorted(span(P0, 0, 2) + span(P1, 0, 1) + span(R0, 0, 3))
    assert set(c.names()) == {"poll"}  # no commit, seek or pause while gathering


# ---------------------------------------------------------------- next_offsets / commit

def test_next_offsets_are_the_last_offset_plus_one_per_topic_partition():
    recs = [ConsumerRecord(tp.topic, tp.partition, -1, off, 0, 0, None, b"", [], None, -1, 0, -1)
            for tp, off in [(P0, 5), (P0, 7), (R0, 3), (P0, 6), (P1, 0)]]
    offsets = batching.next_offsets(recs)
    assert offsets == {P0: oam(8), P1: oam(1), R0: oam(4)}  # the highest, not the last seen
    assert all(type(tp) is TopicPartition and type(om) is OffsetAndMetadata for tp, om in offsets.items())
    assert batching.next_offsets([]) == {}


def test_commit_commits_last_offset_plus_one_of_each_partition_of_the_batch(clock):
    c = FakeConsumer(clock, {P0: values(5), P1: values(3), P2: values(4)},
                     committed={P0: 2, P2: 4})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    assert sorted(keys(batch)) == sorted(span(P0, 2, 5) + span(P1, 0, 3))
    assert batching.commit(c, batch) is True
    assert c.commits == [{P0: oam(5), P1: oam(3)}]  # P2, not in the batch, is not committed
    assert c.committed_offsets == {P0: 5, P1: 3, P2: 4}
    assert (c.position(P0), c.position(P1)) == (5, 3)  # commit does not move the positions


def test_commit_leaves_out_a_partition_revoked_during_the_batch(clock):
    c = FakeConsumer(clock, {P0: values(2), P1: values(3)})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    c.rebalance(revoke=[P1])
    assert batching.commit(c, batch) is True
    assert c.commits == [{P0: oam(2)}]
    assert P1 not in c.committed_offsets
    # Whoever owns P1 next starts from its last commit: its records are read again, not lost.
    c.rebalance(assign=[P1])
    assert keys(batching.gather(c, max_records=10, wait_ms=0)) == span(P1, 0, 3)


@pytest.mark.parametrize("batch_of", ["revoked partitions", "nothing"])
def test_commit_with_nothing_left_to_commit_does_not_call_commit(clock, batch_of):
    c = FakeConsumer(clock, {P0: values(2)})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    if batch_of == "nothing":
        batch = []
    else:
        c.rebalance(revoke=[P0])
    assert batching.commit(c, batch) is False
    assert "commit" not in c.names() and c.committed_offsets == {}


@pytest.mark.parametrize("error", [CommitFailedError("group rebalanced"), KafkaTimeoutError("no coordinator"),
                                   KafkaError("broker error")])
def test_a_failed_commit_is_reported_not_raised_and_commits_nothing(clock, error):
    c = FakeConsumer(clock, {P0: values(2)})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    c.commit_error = error
    assert batching.commit(c, batch) is False
    assert c.names().count("commit") == 1 and c.committed_offsets == {}


# ---------------------------------------------------------------- rewind

def test_rewind_seeks_each_partition_back_to_the_first_record_of_the_batch(clock):
    c = FakeConsumer(clock, {P0: values(6), P1: values(3)}, committed={P0: 2})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    assert sorted(keys(batch)) == sorted(span(P0, 2, 6) + span(P1, 0, 3))
    batching.rewind(c, batch[::-1])  # the lowest offset wins, whatever the order of the records
    assert sorted(c.seeks) == [(P0, 2), (P1, 0)]
    assert "commit" not in c.names()
    assert keys(batching.gather(c, max_records=10, wait_ms=0)) == keys(batch)  # read again, in full


def test_rewind_skips_a_partition_revoked_during_the_batch(clock):
    c = FakeConsumer(clock, {P0: values(2), P1: values(2)})
    batch = batching.gather(c, max_records=10, wait_ms=0)
    c.rebalance(revoke=[P1])
    batching.rewind(c, batch)  # seeking P1 would raise: it is no longer assigned
    assert c.seeks == [(P0, 0)]


# ---------------------------------------------------------------- paused polling

def test_poll_paused_pauses_every_partition_and_returns_nothing(clock):
    c = FakeConsumer(clock, {P0: values(3), P1: values(3)})
    assert batching.poll_paused(c, 7) is None
    assert c.polls == [{"timeout_ms": 7, "max_records": None, "assigned": {P0, P1}, "paused": {P0, P1},
                        "returned": 0}]
    assert (c.position(P0), c.position(P1)) == (0, 0)


def test_poll_paused_seeks_back_records_of_a_partition_assigned_inside_the_poll(clock):
    c = FakeConsumer(clock, {P0: values(3), P2: values(4)}, committed={P2: 1}, assigned=[P0])
    c.hooks.append(at_poll(0, lambda c: c.rebalance(assign=[P2])))  # new, unpaused: poll returns 1..3
    batching.poll_paused(c, 1)
    assert c.polls[0]["assigned"] == {P0} and c.polls[-1]["returned"] == 3
    assert c.seeks == [(P2, 1)] and c.position(P2) == 1
    c.resume(*c.assignment())
    batch = batching.gather(c, max_records=10, wait_ms=0)
    assert sorted(keys(batch)) == sorted(span(P0, 0, 3) + span(P2, 1, 4))  # nothing skipped
    assert batching.commit(c, batch) and c.committed_offsets == {P0: 3, P2: 4}


def test_idle_wait_polls_paused_for_the_whole_time_then_resumes(clock):
    c = FakeConsumer(clock, {P0: values(3), P1: values(3)})
    batching.idle_wait(c, 0.5, threading.Event())
    timeouts = [p["timeout_ms"] for p in c.polls]
    assert timeouts[:2] == [200, 200] and max(timeouts) == 200 and min(timeouts) >= 1
    assert sum(timeouts) == 500 and clock.ms == 64_500
    assert_liveness_polls_only(c.polls)
    assert c.paused() == set() and (c.position(P0), c.position(P1)) == (0, 0)
    assert keys(batching.gather(c, max_records=10, wait_ms=0)) == span(P0, 0, 3) + span(P1, 0, 3)


def test_idle_wait_ends_once_stop_is_set(clock):
    c = FakeConsumer(clock, {P0: values(3)})
    stop = threading.Event()
    c.hooks.append(at_poll(1, lambda c: stop.set()))
    batching.idle_wait(c, 60.0, stop)
    assert len(c.polls) == 2 and c.paused() == set()
    batching.idle_wait(c, 60.0, stop)  # already stopping: no poll at all
    assert len(c.polls) == 2


def test_idle_wait_resumes_the_partitions_when_poll_fails(clock):
    c = FakeConsumer(clock, {P0: values(3), P1: values(3)})

    def fail(_c):
        raise KafkaError("connection lost")

    c.hooks.append(at_poll(1, fail))
    with pytest.raises(KafkaError):
        batching.idle_wait(c, 60.0, threading.Event())
    assert c.paused() == set()


def test_wait_polling_returns_a_quick_result_without_pausing_or_polling(clock):
    c = FakeConsumer(clock, {P0: values(3)})
    future = concurrent.futures.Future()
    future.set_result("predictions")
    assert batching.wait_polling(c, future) == "predictions"
    assert c.polls == [] and "pause" not in c.names()


def test_wait_polling_keeps_polling_paused_while_the_effect_runs(clock):
    c = FakeConsumer(clock, {P0: values(3), P1: values(2)})
    future = concurrent.futures.Future()
    c.hooks.append(at_poll(2, lambda c: future.set_result("done")))  # the effect ends during poll 2
    assert batching.wait_polling(c, future, poll_ms=1) == "done"
    assert len(c.polls) == 3 and {p["timeout_ms"] for p in c.polls} == {1}
    assert_liveness_polls_only(c.polls)
    assert c.paused() == set()
    assert sorted(keys(batching.gather(c, max_records=10, wait_ms=0))) == span(P0, 0, 3) + span(P1, 0, 2)


def test_wait_polling_raises_the_effect_error_and_resumes(clock):
    c = FakeConsumer(clock, {P0: values(3)})
    future = concurrent.futures.Future()
    c.hooks.append(at_poll(1, lambda c: future.set_exception(ConnectionError("service down"))))
    with pytest.raises(ConnectionError, match="service down"):
        batching.wait_polling(c, future, poll_ms=1)
    assert len(c.polls) == 2 and c.paused() == set()


def test_rebalance_during_a_slow_effect_commits_only_partitions_still_owned(clock):
    c = FakeConsumer(clock, {P0: values(2), P1: values(2), P2: values(3)}, assigned=[P0, P1])
    batch = batching.gather(c, max_records=10, wait_ms=0)
    future = concurrent.futures.Future()
    c.hooks.append(at_poll(1, lambda c: c.rebalance(revoke=[P1], assign=[P2])))
    c.hooks.append(at_poll(3, lambda c: future.set_result(True)))
    assert batching.wait_polling(c, future, poll_ms=1) is True
    assert batching.commit(c, batch)
    assert c.commits == [{P0: oam(2)}]
    assert c.seeks == [(P2, 0)]  # P2's records, returned by a liveness poll, are put back
    assert keys(batching.gather(c, max_records=10, wait_ms=0)) == span(P2, 0, 3)


def test_wait_polling_raises_a_timeout_error_of_the_effect(clock):
    c = FakeConsumer(clock, {P0: values(3)})
    future = concurrent.futures.Future()
    future.set_exception(TimeoutError("read timed out"))

    def guard(_c, i):  # ends the otherwise endless loop
        if i >= 50:
            raise RuntimeError("wait_polling still polling after its effect had failed")

    c.hooks.append(guard)
    with pytest.raises(TimeoutError, match="read timed out"):
        batching.wait_polling(c, future, poll_ms=1)
    assert c.polls == []


# ---------------------------------------------------------------- the consumers' loops

def kafka_settings() -> KafkaSettings:
    return KafkaSettings(images_topic=IMAGES, results_topic=RESULTS, dlq_topic=DLQ)


PNG = encode_png(np.zeros((32, 32, 3), dtype=np.uint8))


def image_value(seq: int) -> bytes:
    msg = make_image_message(png=PNG, device_id="dev", producer_id="prod", seq=seq, label=None,
                             dataset="test")
    return dumps({**msg, "sent_at": 1.0})


def result_value(seq: int) -> bytes:
    image = {**make_image_message(png=PNG, device_id="dev", producer_id="prod", seq=seq, label=None,
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


class FakeCollection:
    def __init__(self, calls, failures=0):
        self.calls, self.failures = calls, failures

    def create_index(self, keys, **kwargs):
        pass

    def bulk_write(self, updates, ordered=True):
        from pymongo.errors import AutoReconnect

        ok = self.failures == 0
        self.calls.append(("bulk_write", (len(updates), ok)))
        if not ok:
            self.failures -= 1
            raise AutoReconnect("MongoDB is down")


class FakeMongoClient:
    def close(self):
        pass


@pytest.fixture
def run_db_writer(monkeypatch, clock):
    from consumers import db

    def run(consumer, collection_failures=0, max_records=500):
        collection = FakeCollection(consumer.calls, collection_failures)
        producer = FakeProducer(consumer.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        monkeypatch.setattr(db, "connect", lambda *a, **k: FakeMongoClient())
        monkeypatch.setattr(db, "images_collection", lambda *a, **k: collection)
        stop = threading.Event()
        writer = db.DbWriter(kafka_settings(), MongoSettings(), stop, max_records)
        return writer, stop
    return run


def test_db_writer_commits_after_the_bulk_write_succeeded(clock, run_db_writer):
    c = FakeConsumer(clock, {P0: [image_value(0), image_value(1), b"not json"], R0: [result_value(0)]})
    writer, stop = run_db_writer(c)
    c.hooks.append(stop_when_drained(stop))
    writer.run()
    names = c.names()
    assert [d for n, d in c.calls if n == "bulk_write"] == [(3, True)]  # the invalid image is skipped...
    assert names.index("bulk_write") < names.index("commit")
    assert c.commits == [{P0: oam(3), R0: oam(1)}]  # ...and committed with the rest
    assert c.closed


def test_db_writer_polls_paused_through_an_outage_and_commits_once_the_write_succeeds(clock, run_db_writer):
    c = FakeConsumer(clock, {P0: [image_value(0), image_value(1)], R0: [result_value(0)]})
    writer, stop = run_db_writer(c, collection_failures=2)
    c.hooks.append(stop_when_drained(stop))
    writer.run()
    names = c.names()
    writes = [i for i, n in enumerate(names) if n == "bulk_write"]
    assert [c.calls[i][1] for i in writes] == [(3, False), (3, False), (3, True)]
    assert names.count("commit") == 1 and names.index("commit") > writes[-1]
    outage = [p for p in c.polls[1:] if p["paused"]]
    assert_liveness_polls_only(outage)
    assert len(outage) == names[writes[0]:writes[-1]].count("poll")  # every poll in between was paused
    assert c.commits == [{P0: oam(2), R0: oam(1)}]
    assert c.paused() == set()


def test_db_writer_stopped_during_an_outage_rewinds_and_commits_nothing(clock, run_db_writer):
    c = FakeConsumer(clock, {P0: values(1) + [image_value(1), image_value(2)], R0: [result_value(0)]},
                     committed={P0: 1})
    writer, stop = run_db_writer(c, collection_failures=10**6)
    c.hooks.append(stop_after_paused_polls(stop, 3))
    writer.run()
    assert c.commits == [] and "commit" not in c.names()
    assert sorted(c.seeks) == [(P0, 1), (R0, 0)]
    assert (c.position(P0), c.position(R0)) == (1, 0)


@pytest.fixture
def run_inference(monkeypatch, clock):
    from consumers import inference

    def run(consumer, predict_failures=0, publish_failures=0, stop_paused_polls=None):
        producer = FakeProducer(consumer.calls, fail_batches=publish_failures)
        monkeypatch.setattr(inference, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(inference, "make_producer", lambda *a, **k: producer)
        failures = [predict_failures]

        def predict_files(self, items):
            consumer.calls.append(("predict", len(items)))
            if failures[0]:
                failures[0] -= 1
                raise inference.ServiceUnavailable("HTTP 503")
            return {"model": "m", "predictions": [
                {"image_id": image_id, "label": "cat", "confidence": 0.5} for image_id, _img, _type in items]}

        monkeypatch.setattr(inference.InferenceClient, "predict_files", predict_files)
        stop = threading.Event()
        settings = InferenceClientSettings(inference_url="http://service.invalid", predict_batch_images=8,
                                           predict_batch_wait_ms=0, retry_initial_s=0.5, retry_max_s=1.0)
        ic = inference.InferenceConsumer(kafka_settings(), settings, stop)
        consumer.hooks.append(stop_when_drained(stop) if stop_paused_polls is None
                              else stop_after_paused_polls(stop, stop_paused_polls))
        ic.run()
        return producer
    return run


def test_inference_consumer_commits_after_its_results_are_published(clock, run_inference):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]})
    producer = run_inference(c)
    names = c.names()
    assert names.index("predict") < names.index("send") < names.index("flush") < names.index("commit")
    assert [t for t, _ in producer.sent] == [RESULTS] * 3
    assert c.commits == [{P0: oam(3)}] and c.closed


def test_inference_consumer_polls_paused_through_an_outage_and_commits_once(clock, run_inference):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]})
    producer = run_inference(c, predict_failures=2)
    names = c.names()
    predicts = [i for i, n in enumerate(names) if n == "predict"]
    assert len(predicts) == 3
    assert names.count("commit") == 1 and names.index("commit") > predicts[-1]
    assert_liveness_polls_only([p for p in c.polls if p["paused"]])
    assert names[predicts[0]:predicts[-1]].count("poll") >= 2  # it kept polling during the outage
    assert len(producer.sent) == 3 and c.commits == [{P0: oam(3)}] and c.paused() == set()


def test_inference_consumer_rewinds_a_batch_whose_results_were_not_delivered(clock, run_inference):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(3)]}, committed={P0: 0})
    producer = run_inference(c, publish_failures=1)
    names = c.names()
    assert c.seeks == [(P0, 0)]
    assert names.index("seek") < names.index("commit")  # nothing committed before the redelivery
    assert names.count("predict") == 2 and len(producer.sent) == 6  # the batch was processed again
    assert c.commits == [{P0: oam(3)}]


def test_inference_consumer_stopped_during_an_outage_rewinds_and_commits_nothing(clock, run_inference):
    c = FakeConsumer(clock, {P0: [image_value(i) for i in range(5)]}, committed={P0: 2})
    producer = run_inference(c, predict_failures=10**6, stop_paused_polls=3)
    assert producer.sent == [] and "commit" not in c.names()
    assert c.seeks == [(P0, 2)] and c.position(P0) == 2
