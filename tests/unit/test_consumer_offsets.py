"""The consumers' offset logic (consumers/batching.py) and the consume loop (consumers/loop.py)
both consumers run, against the in-memory consumer and producer of tests/fakes.py on a fake
clock: nothing here sleeps or compares elapsed time.
"""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from common.settings import InferenceClientSettings
from common.store.mongodb import MongoSink
from consumers import batching
from tests.fakes import (P0, P1, P2, R0, RESULTS, FakeConsumer, FakeProducer, assert_liveness_polls_only, at_poll,
                         image_value, kafka_settings, keys, oam, result_value, span, stop_after_paused_polls,
                         stop_when_drained, values)


# ---------------------------------------------------------------- gather

def test_gather_with_nothing_to_read_polls_once_with_the_idle_timeout(clock):
    c = FakeConsumer(clock, {P0: values(2)})
    c.visible[P0] = 0
    c.hooks.append(at_poll(1, lambda c: c.arrive(P0, 2)))  # would arrive on a second poll
    assert batching.gather(c, max_records=8, wait_ms=250, idle_timeout_ms=500) == []
    assert [(p["timeout_ms"], p["max_records"]) for p in c.polls] == [(500, 8)]
    assert c.position(P0) == 0
    assert keys(batching.gather(c, max_records=8, wait_ms=0)) == span(P0, 0, 2)


def test_gather_while_the_broker_is_away_pauses_and_lets_the_loop_poll_again(clock):
    # kafka-python raises when the group coordinator cannot be reached (the broker
    # restarting): the consumer goes on instead of dying with the batch it had.
    c = FakeConsumer(clock, {P0: values(3)})
    refused = []

    def away(c, index):
        if not refused:
            refused.append(index)
            raise KafkaConnectionError("111 ECONNREFUSED")

    c.hooks.append(away)
    before = clock.ms
    assert batching.gather(c, max_records=8, wait_ms=0) == []
    assert clock.ms - before == batching.BROKER_AWAY_PAUSE_S * 1000
    assert keys(batching.gather(c, max_records=8, wait_ms=0)) == span(P0, 0, 3)


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

class FakeCollection:
    """A collection whose bulk_write fails ``failures`` times (MongoDB down), then succeeds."""

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


@pytest.fixture
def run_db_writer(monkeypatch, clock):
    from consumers import db

    def run(consumer, collection_failures=0, max_records=500):
        collection = FakeCollection(consumer.calls, collection_failures)
        producer = FakeProducer(consumer.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        _writer, loop = db.make_loop(kafka_settings(), MongoSink(collection), stop, max_records)
        return loop, stop
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
        _handler, loop = inference.make_loop(kafka_settings(), settings, stop)
        consumer.hooks.append(stop_when_drained(stop) if stop_paused_polls is None
                              else stop_after_paused_polls(stop, stop_paused_polls))
        loop.run()
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
