"""The PostgreSQL store (common/store/postgres.py) against a real server started here.

* The DB consumer (fake Kafka of tests/fakes.py, real sink): a row PostgreSQL cannot hold
  (a NUL byte in text) or refuses (a unique index the pipeline never creates, added here)
  is dead-lettered alone, with its SQLSTATE or psycopg's reason, partition and offset; the
  rest of the batch is stored and everything committed.  The server stopped: the write is
  retried, nothing committed, until it is back.
* The sink: the image and result halves converge in either order, a redelivery changes
  nothing (the first-stored timestamps keep their earliest value), commits are durable
  (synchronous_commit on even where the server's default is off), a stopped server is one
  Transient for the whole batch and the next write reconnects.
* The reader: what the rest of the pipeline reads back; an empty database reads as empty.

What is stored is checked with SQL (tests/pg.py), not through the reader under test.
"""

from __future__ import annotations

import json
import threading

import pytest

from common.store import Refused, Stored, Transient, image_upsert, result_upsert
from common.store.postgres import PostgresReader, PostgresSink, classify
from tests import pg
from tests.fakes import (P0, R0, FakeConsumer, RecordingProducer, at_poll, dead_letters, image_value, kafka_settings,
                         oam, result_value, stop_after_paused_polls, stop_when_drained)
from tests.unit.test_db_write_errors import GUARD_PAUSED_POLLS, image_id_of, origin, poison


@pytest.fixture(scope="module")
def server():
    """One server for the module (synchronous_commit off by default: the sink must turn it on)."""
    d = pg.reachable_dir("iot-pg-unit-")
    s = pg.PostgresServer(d, "-c", "synchronous_commit=off")
    try:
        yield s.start()
    finally:
        s.stop()
        pg.remove(d)


@pytest.fixture
def postgres(server):
    """The module's server, with no table (each test starts from an empty database), running."""
    if server.proc is None:
        server.start()
    with pg.connect(server.dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS iot_image_data, iot_schema_version, iot_dlq_replays")
    return server


@pytest.fixture
def sink(postgres):
    s = PostgresSink.open(postgres.settings())
    s.prepare()
    yield s
    s.close()


@pytest.fixture
def run_writer(monkeypatch, clock, postgres):
    """Run a DbWriter (real PostgresSink, fake Kafka) until drained."""
    from consumers import db

    def run(consumer, before=None):
        producer = RecordingProducer(consumer.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        sink = PostgresSink.open(postgres.settings())
        writer, loop = db.make_loop(kafka_settings(), sink, stop)
        writer.prepare(stop)
        if before is not None:
            before()
        consumer.hooks.append(stop_when_drained(stop))
        consumer.hooks.append(stop_after_paused_polls(stop, GUARD_PAUSED_POLLS))
        loop.run()
        sink.close()
        return producer
    return run


def msg(n: int, **extra) -> dict:
    """An image message (seq ``n``, a new image id), fields replaced by ``extra``."""
    return {**json.loads(image_value(n)), **extra}


def result(n: int, **extra) -> dict:
    """A result message (seq ``n``, a new image id unless ``extra`` gives one)."""
    return {**json.loads(result_value(n)), **extra}


def as_result(message: dict):
    """A result message as the DB writer has it once parsed (common.models.ResultMessage)."""
    from common.models import ResultMessage

    return ResultMessage.model_validate(message)


# ------------------------------------------------------------------ through the DB writer

def test_a_nul_byte_dead_letters_that_record_only_and_the_rest_is_stored(clock, run_writer, monkeypatch, postgres):
    poison(monkeypatch, {1: {"label": "c\x00t"}})
    images = [image_value(i) for i in range(4)]
    nul_result = json.dumps(result(7, prediction="c\x00t")).encode()  # valid JSON ("\u0000"), valid schema
    results = [result_value(0), nul_result]
    c = FakeConsumer(clock, {P0: images, R0: results})
    producer = run_writer(c)

    letters = dead_letters(producer)
    assert sorted(origin(d) for d in letters) == [(P0.topic, 0, 1), (R0.topic, 0, 1)]
    for d in letters:
        assert "NUL (0x00)" in d.reason and "PostgreSQL" in d.reason, d.reason
    stored = pg.rows(postgres.dsn)
    assert set(stored) == {image_id_of(v) for v in (*images[:1], *images[2:], results[0])}
    assert stored[image_id_of(results[0])]["prediction"] == "cat"
    assert c.commits == [{P0: oam(4), R0: oam(2)}]


def test_a_constraint_violation_dead_letters_that_record_only(clock, run_writer, postgres):
    # image_value(0) twice: the same producer_id and seq under two image ids
    images = [image_value(0), image_value(1), image_value(0), image_value(2)]
    results = [result_value(5)]
    c = FakeConsumer(clock, {P0: images, R0: results})

    def unique_index():
        with pg.connect(postgres.dsn) as conn:
            conn.execute("CREATE UNIQUE INDEX test_unique_producer_seq ON iot_image_data (producer_id, seq)")

    producer = run_writer(c, before=unique_index)
    letters = dead_letters(producer)
    assert [origin(d) for d in letters] == [(P0.topic, 0, 2)]
    assert "SQLSTATE 23505" in letters[0].reason and letters[0].value == images[2], letters[0].reason
    assert set(pg.rows(postgres.dsn)) == {image_id_of(v) for i, v in enumerate(images + results) if i != 2}
    assert c.commits == [{P0: oam(4), R0: oam(1)}]


def test_a_stopped_server_is_retried_then_everything_is_stored(clock, run_writer, postgres):
    images, results = [image_value(i) for i in range(3)], [result_value(0)]
    c = FakeConsumer(clock, {P0: images, R0: results})
    started = []

    def restart(_consumer):
        postgres.start()  # returns once it accepts connections
        started.append(len(c.commits))

    c.hooks.append(at_poll(8, restart))  # some paused polls into the retries
    producer = run_writer(c, before=postgres.stop)

    assert started == [0], "something was committed while the server was down"
    assert not dead_letters(producer)
    assert set(pg.rows(postgres.dsn)) == {image_id_of(v) for v in images + results}
    assert c.commits == [{P0: oam(3), R0: oam(1)}]


# ------------------------------------------------------------------ the sink

COMPARED = ("schema", "device_id", "producer_id", "seq", "sent_at", "label", "dataset", "format", "image",
            "prediction", "confidence", "model", "received_at", "inferred_at", "published_at")


def test_the_two_halves_converge_in_either_order_and_a_redelivery_changes_nothing(sink, postgres):
    a, b = msg(1, label="cat"), msg(2, label="dog")
    ra, rb = result(1, image_id=a["image_id"]), result(2, image_id=b["image_id"])
    assert sink.write([image_upsert(a, b"png-a", 10.0)]) == [Stored()]
    assert sink.write([result_upsert(as_result(ra), 20.0)]) == [Stored()]
    assert sink.write([result_upsert(as_result(rb), 21.0)]) == [Stored()]
    assert sink.write([image_upsert(b, b"png-b", 11.0)]) == [Stored()]
    first = pg.rows(postgres.dsn)
    # Redelivered later (later clocks) and earlier (a writer whose clock is behind): the
    # fields are the same, the first-stored times the earliest seen.
    sink.write([image_upsert(a, b"png-a", 30.0), result_upsert(as_result(rb), 31.0)])
    sink.write([result_upsert(as_result(ra), 5.0), image_upsert(b, b"png-b", 6.0)])
    again = pg.rows(postgres.dsn)

    assert set(first) == set(again) == {a["image_id"], b["image_id"]}
    for image_id in first:
        assert all(first[image_id][k] is not None for k in COMPARED), first[image_id]
        assert {k: again[image_id][k] for k in COMPARED} == {k: first[image_id][k] for k in COMPARED}
    assert (first[a["image_id"]]["stored_at"], first[a["image_id"]]["prediction_stored_at"]) == (10.0, 20.0)
    assert (again[a["image_id"]]["stored_at"], again[a["image_id"]]["prediction_stored_at"]) == (10.0, 5.0)
    assert (again[b["image_id"]]["stored_at"], again[b["image_id"]]["prediction_stored_at"]) == (6.0, 21.0)
    assert bytes(again[a["image_id"]]["image"]) == b"png-a" and again[a["image_id"]]["prediction"] == "cat"


def test_a_row_postgres_cannot_hold_is_refused_with_its_reason_and_the_rest_stored(sink, postgres):
    batch = [image_upsert(msg(0), b"x", 1.0), image_upsert(msg(1, label="a\x00b"), b"x", 1.0),
             image_upsert(msg(2, seq=2 ** 63), b"x", 1.0), image_upsert(msg(3, device_id="\ud800"), b"x", 1.0),
             result_upsert(as_result(result(4)), 1.0)]
    out = sink.write(batch)
    assert [type(o) for o in out] == [Stored, Refused, Refused, Refused, Stored]
    assert "DataError" in out[1].reason and "NUL (0x00)" in out[1].reason
    assert "SQLSTATE 22003" in out[2].reason and "bigint out of range" in out[2].reason
    assert "UnicodeEncodeError" in out[3].reason
    assert set(pg.rows(postgres.dsn)) == {batch[0].image_id, batch[4].image_id}


def test_commits_are_durable_and_the_schema_is_recorded_once(sink, postgres):
    sink.write([image_upsert(msg(0), b"x", 1.0)])
    assert sink.conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    with pg.connect(postgres.dsn) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"  # the server's default here
        sink.prepare()  # again: nothing changes
        assert conn.execute("SELECT version FROM iot_schema_version").fetchall() == [(1,)]
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'iot_image_data'")}
        assert {"iot_image_data_producer_seq", "iot_image_data_device_sent", "iot_image_data_prediction"} <= indexes
        conn.execute("UPDATE iot_schema_version SET version = 99")
    with pytest.raises(Exception, match="schema version 99, newer than"):
        sink.prepare()


def test_a_stopped_server_is_one_transient_for_the_batch_and_the_next_write_reconnects(sink, postgres):
    assert sink.write([image_upsert(msg(0), b"x", 1.0)]) == [Stored()]
    postgres.stop()
    out = sink.write([image_upsert(msg(1), b"x", 1.0), result_upsert(as_result(result(2)), 1.0)])
    assert isinstance(out[0], Transient) and out[0] is out[1] and out[0].kind == "transient"
    postgres.start()
    assert sink.write([image_upsert(msg(1), b"x", 1.0)]) == [Stored()]
    assert len(pg.rows(postgres.dsn)) == 2


@pytest.mark.parametrize("state, expected", [("22021", "refused"), ("23505", "refused"), ("54000", "refused"),
                                             ("53100", "disk full"), ("08006", "transient"), ("57P01", "transient"),
                                             ("57P03", "transient"), ("40001", "transient"), ("40P01", "transient"),
                                             ("42501", "transient"), ("42P01", "transient"), ("XX000", "transient")])
def test_sqlstates_are_classified_as_the_module_says(state, expected):
    from psycopg import errors

    assert classify(errors.lookup(state)("message")) == expected


# ------------------------------------------------------------------ the reader

def test_the_reader_reads_what_was_stored_and_an_empty_database_as_empty(postgres):
    reader = PostgresReader(postgres.settings())
    try:
        reader.ping()
        assert reader.count() == 0 and list(reader.by_ids(["x"], ["prediction"])) == [] and reader.latest(3, []) == []
        assert reader.replay_record("t:0:1") is None
        sink = PostgresSink.open(postgres.settings())
        sink.prepare()
        a, b = msg(0, producer_id="pa"), msg(1, producer_id="pb")
        sink.write([image_upsert(a, b"png", 1.0), image_upsert(b, b"png", 1.0),
                    result_upsert(as_result(result(0, image_id=a["image_id"], producer_id="pa")), 2.0)])
        sink.close()
        assert reader.count() == 2 and reader.count(with_prediction=True) == 1
        assert reader.count(producer_ids=["pb"]) == 1
        (doc,) = reader.by_ids([a["image_id"]], ["prediction", "image", "label", "no_such_field"])
        assert doc == {"image_id": a["image_id"], "prediction": "cat", "image": b"png"}  # a NULL label: absent
        assert {d["image_id"] for d in reader.by_producers(None, ["seq"])} == {a["image_id"], b["image_id"]}
        assert [d["seq"] for d in reader.by_producers(["pb"], ["seq"])] == [1]
        assert [d["image_id"] for d in reader.latest(5, ["image"])] == [a["image_id"]]
        reader.record_replay("t:0:1", {"fingerprint": "f", "replayed_to": {"offset": 3}, "replays": 1})
        reader.record_replay("t:0:1", {"replays": 2})
        assert reader.replay_record("t:0:1") == {"fingerprint": "f", "replayed_to": {"offset": 3}, "replays": 2}
        assert postgres.cluster.password() not in reader.where and reader.where.endswith("(iot_image_data)")
    finally:
        reader.close()
