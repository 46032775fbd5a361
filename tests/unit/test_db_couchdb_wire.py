"""The CouchDB store (common/store/couchdb.py, couchdb_reader.py) against a real pouchdb-server started here
(CouchDB's HTTP API, on disk, an admin with a password: tests/couch.py).

* The DB consumer (fake Kafka of tests/fakes.py, real sink): a document CouchDB refuses
  (an id it rejects, refusing the whole _bulk_docs request; a validate_doc_update function
  forbidding one document) is dead-lettered alone with CouchDB's reason, partition and
  offset; the rest of the batch is stored and everything committed.  The server stopped:
  the write is retried, nothing committed, until it is back.
* The sink: the image and result halves converge in either order, also when another writer
  changes the document between the sink's read and its write (a real 409 conflict, merged,
  never overwritten); a redelivery changes nothing, not even the revision; what CouchDB
  would store as something else than an image's document is refused before sending; a
  stopped server is one Transient for the whole batch and the next write goes through.
* The reader: what the rest of the pipeline reads back; a database not prepared reads as empty.

What is stored is checked over HTTP (tests/couch.py), not through the reader under test.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from common.store import Stored, Transient, Upsert, image_upsert, result_upsert
from common.store.couchdb import CouchSink
from common.store.couchdb_reader import CouchReader
from tests import couch
from tests.fakes import (P0, R0, FakeConsumer, RecordingProducer, at_poll, dead_letters, image_value, kafka_settings,
                         oam, result_value, stop_after_paused_polls, stop_when_drained)
from tests.unit.test_db_write_errors import GUARD_PAUSED_POLLS, image_id_of, origin, poison

# Refuses, as a deployment's own rule could, images labelled and results made "forbidden".
REFUSE = {"_id": "_design/refuse", "validate_doc_update": (
    "function (doc) { if (doc.label === 'forbidden' || doc.model === 'forbidden') "
    "{ throw({forbidden: 'forbidden by the test'}); } }")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = couch.CouchServer(tmp_path_factory.mktemp("couch"))
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def couchdb(server):
    """The module's server, running, its databases empty."""
    if server.proc is None:
        server.start()
    couch.reset(server)
    return server


@pytest.fixture
def sink(couchdb):
    s = CouchSink.open(couchdb.settings())
    s.prepare()
    yield s
    s.close()


def stored(server, ids=None) -> dict[str, dict]:
    return couch.documents(server.url, server.auth, ids=ids)


@pytest.fixture
def run_writer(monkeypatch, clock, couchdb):
    """Run a DbWriter (real CouchSink, fake Kafka) until drained."""
    from consumers import db

    def run(consumer, before=None):
        producer = RecordingProducer(consumer.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        sink = CouchSink.open(couchdb.settings(couchdb_connect_timeout_s=1, couchdb_timeout_s=10))
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
    return {**json.loads(result_value(n)), **extra}


def as_result(message: dict):
    from common.models import ResultMessage

    return ResultMessage.model_validate(message)


# ------------------------------------------------------------------ through the DB writer

def test_documents_couchdb_refuses_are_dead_lettered_alone_and_the_rest_is_stored(clock, run_writer, monkeypatch,
                                                                                   couchdb):
    bad_id = "_not-a-document-id-" + uuid.uuid4().hex
    poison(monkeypatch, {1: {"image_id": bad_id}, 2: {"label": "forbidden"}})
    images = [image_value(i) for i in range(4)]
    forbidden_result = json.dumps(result(7, model="forbidden")).encode()
    results = [result_value(0), forbidden_result]
    c = FakeConsumer(clock, {P0: images, R0: results})

    def refuse():
        with couchdb.session() as s:
            assert s.put(f"{couchdb.url}/img_db/_design/refuse", json=REFUSE).status_code == 201

    producer = run_writer(c, before=refuse)
    letters = {origin(d): d for d in dead_letters(producer)}
    assert sorted(letters) == [(P0.topic, 0, 1), (P0.topic, 0, 2), (R0.topic, 0, 1)]
    assert "Only reserved document ids may start with underscore" in letters[(P0.topic, 0, 1)].reason
    for where in ((P0.topic, 0, 2), (R0.topic, 0, 1)):
        assert "CouchDB refused the document (forbidden: forbidden by the test)" in letters[where].reason
    assert letters[(P0.topic, 0, 2)].value == images[2]
    assert set(stored(couchdb)) == {image_id_of(v) for v in (images[0], images[3], results[0])}
    assert stored(couchdb)[image_id_of(results[0])]["prediction"] == "cat"
    assert c.commits == [{P0: oam(4), R0: oam(2)}]


def test_a_stopped_server_is_retried_then_everything_is_stored(clock, run_writer, couchdb):
    images, results = [image_value(i) for i in range(3)], [result_value(0)]
    c = FakeConsumer(clock, {P0: images, R0: results})
    started = []

    def restart(_consumer):
        couchdb.start()  # returns once it answers
        started.append(len(c.commits))

    c.hooks.append(at_poll(8, restart))  # some paused polls into the retries
    producer = run_writer(c, before=couchdb.stop)

    assert started == [0], "something was committed while the server was down"
    assert not dead_letters(producer)
    assert set(stored(couchdb)) == {image_id_of(v) for v in images + results}
    assert c.commits == [{P0: oam(3), R0: oam(1)}]


# ------------------------------------------------------------------ the sink

COMPARED = ("schema", "device_id", "producer_id", "seq", "sent_at", "label", "dataset", "format", "image",
            "prediction", "confidence", "model", "received_at", "inferred_at", "published_at")


def test_the_two_halves_converge_in_either_order_and_a_redelivery_changes_nothing(sink, couchdb):
    a, b = msg(1, label="cat"), msg(2, label="dog")
    ra, rb = result(1, image_id=a["image_id"]), result(2, image_id=b["image_id"])
    assert sink.write([image_upsert(a, b"png-a", 10.0)]) == [Stored()]
    assert sink.write([result_upsert(as_result(ra), 20.0)]) == [Stored()]
    assert sink.write([result_upsert(as_result(rb), 21.0)]) == [Stored()]
    assert sink.write([image_upsert(b, b"png-b", 11.0)]) == [Stored()]
    first = stored(couchdb)
    # Redelivered later (later clocks): nothing changes, not even the revision.
    assert sink.write([image_upsert(a, b"png-a", 30.0), result_upsert(as_result(rb), 31.0)]) == [Stored()] * 2
    assert stored(couchdb) == first
    # Redelivered by a writer whose clock is behind: the first-stored times the earliest seen.
    sink.write([result_upsert(as_result(ra), 5.0), image_upsert(b, b"png-b", 6.0)])
    again = stored(couchdb)

    assert set(first) == set(again) == {a["image_id"], b["image_id"]}
    for image_id in first:
        assert all(k in first[image_id] for k in COMPARED), first[image_id]
        assert {k: again[image_id][k] for k in COMPARED} == {k: first[image_id][k] for k in COMPARED}
    assert (first[a["image_id"]]["stored_at"], first[a["image_id"]]["prediction_stored_at"]) == (10.0, 20.0)
    assert (again[a["image_id"]]["stored_at"], again[a["image_id"]]["prediction_stored_at"]) == (10.0, 5.0)
    assert (again[b["image_id"]]["stored_at"], again[b["image_id"]]["prediction_stored_at"]) == (6.0, 21.0)
    assert again[a["image_id"]]["image"] == b"png-a" and again[a["image_id"]]["prediction"] == "cat"
    assert again[a["image_id"]]["_attachments"]["image"]["content_type"] == "image/png"


@pytest.mark.parametrize("first_half", ["image", "result"])
def test_a_conflict_with_another_writer_is_merged_never_overwritten(couchdb, monkeypatch, first_half):
    """Between this sink's read and its write, another writer stores the other half of the
    same document: CouchDB answers 409 and the sink reads again and merges."""
    m = msg(3)
    halves = {"image": image_upsert(m, b"png", 10.0),
              "result": result_upsert(as_result(result(3, image_id=m["image_id"])), 20.0)}
    mine, theirs = halves[first_half], halves["result" if first_half == "image" else "image"]
    sink, other = CouchSink.open(couchdb.settings()), CouchSink.open(couchdb.settings())
    sink.prepare()
    reads, sends = [], []
    real_current, real_send = sink._current, sink._send

    def current(ids):
        found = real_current(ids)
        if not reads:
            assert other.write([theirs]) == [Stored()]  # the other writer gets in first
        reads.append(ids)
        return found

    def send(items):
        answers = real_send(items)
        sends.append(answers)
        return answers

    monkeypatch.setattr(sink, "_current", current)
    monkeypatch.setattr(sink, "_send", send)
    try:
        assert sink.write([mine]) == [Stored()]
    finally:
        sink.close(), other.close()
    assert len(reads) == 2 and len(sends) == 2  # read, 409, read again, stored
    (doc,) = stored(couchdb).values()
    assert doc["image"] == b"png" and doc["prediction"] == "cat"
    assert (doc["stored_at"], doc["prediction_stored_at"]) == (10.0, 20.0)
    assert doc["_rev"].startswith("2-")


def test_what_couchdb_refuses_or_would_misread_is_refused_with_its_reason_and_the_rest_stored(sink, couchdb):
    ok = [image_upsert(msg(i), b"x", 1.0) for i in range(3)]
    batch = [ok[0], Upsert("_bad-id", {"label": "x"}), Upsert(str(uuid.uuid4()), {"_secret": 1}), ok[1],
             Upsert("_design/evil", {"label": "x"}), Upsert("", {"label": "x"}),
             Upsert(str(uuid.uuid4()), {"_deleted": True}), Upsert(str(uuid.uuid4()), {"k" * 100_000: 1}),
             Upsert(str(uuid.uuid4()), {"label": "\ud800"}), Upsert(str(uuid.uuid4()), {"confidence": float("nan")}),
             ok[2]]
    out = sink.write(batch)
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["Stored", "Refused", "Refused", "Stored", "Refused", "Refused", "Refused", "Stored", "Refused",
                     "Refused", "Stored"], out
    assert "Only reserved document ids may start with underscore" in out[1].reason
    assert "doc_validation: Bad special document member: _secret" in out[2].reason
    assert "CouchDB special document" in out[4].reason and "CouchDB special document" in out[5].reason
    assert "'_deleted' is one of CouchDB's own document members" in out[6].reason
    assert "UnicodeEncodeError" in out[8].reason and "ValueError" in out[9].reason
    docs = stored(couchdb)
    assert set(docs) == {u.image_id for u in ok} | {batch[7].image_id}
    assert docs[batch[7].image_id]["k" * 100_000] == 1  # a huge field name is CouchDB's to take: stored intact


def test_a_stopped_server_is_one_transient_for_the_batch_and_the_next_write_goes_through(sink, couchdb):
    assert sink.write([image_upsert(msg(0), b"x", 1.0)]) == [Stored()]
    couchdb.stop()
    out = sink.write([image_upsert(msg(1), b"x", 1.0), result_upsert(as_result(result(2)), 1.0)])
    assert isinstance(out[0], Transient) and out[0] is out[1] and out[0].kind == "transient"
    couchdb.start()
    assert sink.write([image_upsert(msg(1), b"x", 1.0)]) == [Stored()]
    assert len(stored(couchdb)) == 2


def test_wrong_credentials_are_transient_never_a_refusal(couchdb):
    for values in ({"couchdb_password": "wrong"}, {"couchdb_user": None, "couchdb_password": None}):
        bad = CouchSink.open(couchdb.settings(**values))
        try:
            out = bad.write([image_upsert(msg(0), b"x", 1.0), image_upsert(msg(1), b"x", 1.0)])
        finally:
            bad.close()
        assert isinstance(out[0], Transient) and out[0] is out[1], out
        assert "401" in out[0].reason or "unauthorized" in out[0].reason, out[0].reason
        assert couchdb.server.password() not in out[0].reason
    assert stored(couchdb) == {}


def test_the_database_is_made_again_when_it_is_gone(sink, couchdb):
    assert sink.write([image_upsert(msg(0), b"x", 1.0)]) == [Stored()]
    with couchdb.session() as s:
        s.delete(f"{couchdb.url}/img_db")
    assert isinstance(sink.write([image_upsert(msg(1), b"x", 1.0)])[0], Transient)
    assert sink.write([image_upsert(msg(1), b"x", 1.0)]) == [Stored()]
    assert len(stored(couchdb)) == 1


# ------------------------------------------------------------------ the reader

def test_the_reader_reads_what_was_stored_and_an_unprepared_database_as_empty(couchdb):
    reader = CouchReader(couchdb.settings())
    try:
        with couchdb.session() as s:
            s.delete(f"{couchdb.url}/img_db")
        reader.ping()
        assert reader.count() == 0 and list(reader.by_ids(["x"], ["prediction"])) == [] and reader.latest(3, []) == []
        assert list(reader.by_producers(None, ["seq"])) == [] and reader.replay_record("t:0:1") is None
        sink = CouchSink.open(couchdb.settings())
        sink.prepare()
        a, b = msg(0, producer_id="pa"), msg(1, producer_id="pb")
        sink.write([image_upsert(a, b"png", 1.0), image_upsert(b, b"png", 1.0),
                    result_upsert(as_result(result(0, image_id=a["image_id"], producer_id="pa")), 2.0)])
        sink.close()
        assert reader.count() == 2 and reader.count(with_prediction=True) == 1
        assert reader.count(producer_ids=["pb"]) == 1 and reader.count(producer_ids=["pa"], with_prediction=True) == 1
        (doc,) = reader.by_ids([a["image_id"]], ["prediction", "image", "no_such_field"])
        assert doc == {"image_id": a["image_id"], "prediction": "cat", "image": b"png"}
        assert {d["image_id"] for d in reader.by_producers(None, ["seq"])} == {a["image_id"], b["image_id"]}
        assert [d["seq"] for d in reader.by_producers(["pb"], ["seq"])] == [1]
        assert [d["image_id"] for d in reader.latest(5, ["image"])] == [a["image_id"]]
        reader.record_replay("t:0:1", {"fingerprint": "f", "replayed_to": {"offset": 3}, "replays": 1})
        reader.record_replay("t:0:1", {"replays": 2})
        assert reader.replay_record("t:0:1") == {"fingerprint": "f", "replayed_to": {"offset": 3}, "replays": 2}
        assert couchdb.server.password() not in reader.where and reader.where == f"{couchdb.url} (img_db)"
    finally:
        reader.close()


def test_the_reader_says_when_the_server_is_down(couchdb):
    from common.store import StoreError

    reader = CouchReader(couchdb.settings(couchdb_connect_timeout_s=1))
    couchdb.stop()
    try:
        with pytest.raises(StoreError, match=r"CouchDB http://127\.0\.0\.1:\d+ \(img_db\): ConnectionError"):
            reader.ping()
    finally:
        reader.close()
        couchdb.start()
