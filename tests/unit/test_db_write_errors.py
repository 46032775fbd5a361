"""The DB consumer's MongoDB write errors, per record (consumers/db.py), against fakes.

A document MongoDB refuses for what it is (validation, duplicate key, too large, a
field name it rejects, a value BSON cannot encode) is dead-lettered with its reason,
partition and offset, and the rest of the batch is written and committed: one bad
record never blocks its partition.  A write that failed for what the server is going
through (not primary, network, write concern, disk full) is retried with backoff and
nothing is committed until it succeeded.

The Kafka side is tests/unit/test_consumer_offsets.py's fakes (fake clock, so the
retries' backoff costs no real time); the collection is a scripted fake whose
``bulk_write`` answers each call with the next scripted outcome.  The same paths
against the real nx-27017 server: tests/unit/test_db_mongo_wire.py.
"""

from __future__ import annotations

import logging
import threading

import bson
import pytest
from pymongo.errors import AutoReconnect, BulkWriteError, NetworkTimeout, NotPrimaryError, OperationFailure

from common.settings import MongoSettings
from common.store import Refused, Stored, Transient, Upsert
from common.store.mongodb import MongoSink, classify_write_error, write_concern
from tests.fakes import (GUARD_PAUSED_POLLS, P0, R0, FakeConsumer, RecordingProducer, dead_letters,
                         image_id_of, image_value, kafka_settings, oam, origin, poison, result_value,
                         stop_after_paused_polls, stop_when_drained)

def op_id(op) -> str:
    return op._filter["_id"]


def write_error(index: int, code: int, errmsg: str) -> dict:
    return {"index": index, "code": code, "errmsg": errmsg, "op": {}}


def bulk_error(write_errors=(), write_concern_errors=()) -> BulkWriteError:
    return BulkWriteError({"writeErrors": list(write_errors), "writeConcernErrors": list(write_concern_errors),
                           "nInserted": 0, "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0,
                           "upserted": []})


class ScriptedCollection:
    """bulk_write answers call i with script[i] (then succeeds): an exception to raise, or a
    function of the ops that returns one (or None).  ``refuse`` maps an image id to the
    (code, errmsg) of a writeError MongoDB returns for that document on every call, as it
    does for a document it rejects.  Every call's op ids are kept, and what is stored:
    each op that did not fail.  ``encode=True`` encodes every op as pymongo does before
    sending, so a value BSON cannot hold raises pymongo's own error."""

    def __init__(self, calls, script=(), refuse=None, encode=False):
        self.calls, self.script, self.refuse, self.encode = calls, list(script), dict(refuse or {}), encode
        self.sent: list[list[str]] = []
        self.stored: set[str] = set()

    def create_index(self, keys, **kwargs):
        pass

    def bulk_write(self, ops, ordered=True):
        ids = [op_id(op) for op in ops]
        self.sent.append(ids)
        if self.encode:
            for op in ops:
                bson.encode({"q": op._filter, "u": op._doc})
        outcome = self.script.pop(0) if self.script else None
        if callable(outcome):
            outcome = outcome(ops)
        refused = [write_error(n, *self.refuse[i]) for n, i in enumerate(ids) if i in self.refuse]
        if refused and outcome is None:
            outcome = bulk_error(refused)
        self.calls.append(("bulk_write", (len(ops), outcome is None)))
        failed = set()
        if isinstance(outcome, BulkWriteError):
            failed = {e["index"] for e in outcome.details["writeErrors"]}
        if outcome is None or isinstance(outcome, BulkWriteError):
            self.stored.update(i for n, i in enumerate(ids) if n not in failed)
        if outcome is not None:
            raise outcome


@pytest.fixture
def db_writer(monkeypatch, clock):
    from consumers import db

    def make(consumer, collection, max_records=500):
        producer = RecordingProducer(consumer.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        _writer, loop = db.make_loop(kafka_settings(), MongoSink(collection), stop, max_records)
        consumer.hooks.append(stop_when_drained(stop))
        consumer.hooks.append(stop_after_paused_polls(stop, GUARD_PAUSED_POLLS))
        return loop, producer
    return make


def last(names: list, name: str) -> int:
    return len(names) - 1 - names[::-1].index(name)


def batch_of(n_images: int, n_results: int = 0):
    images = [image_value(i) for i in range(n_images)]
    results = [result_value(i) for i in range(n_results)]
    return images, results


# ------------------------------------------------------------------ deterministic errors

DETERMINISTIC = [
    (121, "Document failed validation"),
    (11000, "E11000 duplicate key error collection: iot.images index: producer_id_1_seq_1 dup key"),
    (17419, "Resulting document after update is larger than 16777216"),
    (10334, "BSONObj size: 16793699 (0x1000A63) is invalid. Size must be between 0 and 16793600(16MB)"),
    (52, "The dollar ($) prefixed field '$bad' in 'label.$bad' is not allowed in the context of an update"),
    (57, "The dotted field 'a.b' in 'label.a.b' is not valid for storage."),
    (2, "BadValue: an argument the server refuses for this document"),
]


@pytest.mark.parametrize("code, errmsg", DETERMINISTIC, ids=[str(c) for c, _ in DETERMINISTIC])
def test_a_document_mongodb_rejects_is_dead_lettered_and_the_batch_committed(clock, db_writer, code, errmsg):
    images, results = batch_of(4, 2)
    c = FakeConsumer(clock, {P0: images, R0: results})
    # the third image (offset 2) and the second result (offset 1) are refused, every time
    refuse = {image_id_of(images[2]): (code, errmsg), image_id_of(results[1]): (code, errmsg)}
    collection = ScriptedCollection(c.calls, refuse=refuse)
    writer, producer = db_writer(c, collection)
    writer.run()

    letters = dead_letters(producer)
    assert sorted(origin(d) for d in letters) == [(P0.topic, 0, 2), (R0.topic, 0, 1)]
    for d in letters:
        assert str(code) in d.reason and errmsg in d.reason, d.reason
    assert {d.value for d in letters} == {images[2], results[1]}
    assert len(collection.sent) == 1                     # a refused document is not retried
    assert c.commits == [{P0: oam(4), R0: oam(2)}]       # the partition goes on
    assert collection.stored == {image_id_of(v) for v in images + results} - {image_id_of(images[2]),
                                                                              image_id_of(results[1])}
    names = c.names()
    assert names.index("flush") < names.index("commit")  # the dead letters are delivered first


def test_only_the_transient_write_errors_are_retried(clock, db_writer):
    images, _ = batch_of(5)
    c = FakeConsumer(clock, {P0: images})
    collection = ScriptedCollection(c.calls, [
        bulk_error([write_error(0, 10107, "not primary"), write_error(1, 121, "Document failed validation"),
                    write_error(3, 91, "The server is in quiesce mode and will shut down")]),
        bulk_error([write_error(1, 189, "primary stepped down")]),  # index 1 of the retry: offset 3
    ], refuse={image_id_of(images[1]): (121, "Document failed validation")})
    writer, producer = db_writer(c, collection)
    writer.run()

    ids = [image_id_of(v) for v in images]
    assert collection.sent == [ids, [ids[0], ids[3]], [ids[3]]]
    assert [(d.source_offset, "121" in d.reason) for d in dead_letters(producer)] == [(1, True)]
    names = c.names()
    assert names.count("commit") == 1 and names.index("commit") > last(names, "bulk_write")
    assert c.commits == [{P0: oam(5)}]
    assert collection.stored == set(ids) - {ids[1]}


def test_a_write_concern_error_retries_the_whole_batch_and_dead_letters_nothing(clock, db_writer):
    images, results = batch_of(2, 1)
    c = FakeConsumer(clock, {P0: images, R0: results})
    wc = {"code": 64, "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}
    collection = ScriptedCollection(c.calls, [bulk_error(write_concern_errors=[wc])] * 2)
    writer, producer = db_writer(c, collection)
    writer.run()

    assert [len(ids) for ids in collection.sent] == [3, 3, 3]
    assert dead_letters(producer) == []
    names = c.names()
    assert names.count("commit") == 1 and names.index("commit") > last(names, "bulk_write")
    assert c.commits == [{P0: oam(2), R0: oam(1)}]


# ------------------------------------------------------------- errors before the write

UNENCODABLE = {1: {"label": "\ud800"},        # UnicodeEncodeError: a lone surrogate
               3: {"sent_at": 2 ** 70},        # OverflowError: more than 8 bytes
               4: {"dataset": object()}}       # bson.errors.InvalidDocument


def test_a_value_bson_cannot_encode_dead_letters_that_record_only(clock, db_writer, monkeypatch):
    poison(monkeypatch, UNENCODABLE)
    images, results = batch_of(6, 1)
    c = FakeConsumer(clock, {P0: images, R0: results})
    collection = ScriptedCollection(c.calls, encode=True)
    writer, producer = db_writer(c, collection)
    writer.run()  # the encoding error never escapes run() (it would crash the consumer, then loop on restart)

    letters = sorted(dead_letters(producer), key=origin)
    assert [origin(d) for d in letters] == [(P0.topic, 0, 1), (P0.topic, 0, 3), (P0.topic, 0, 4)]
    for d, error in zip(letters, ("UnicodeEncodeError", "OverflowError", "InvalidDocument")):
        assert error in d.reason, d.reason
    assert [d.value for d in letters] == [images[1], images[3], images[4]]
    good = {image_id_of(v) for i, v in enumerate(images) if i not in UNENCODABLE} | {image_id_of(results[0])}
    assert collection.stored == good
    assert c.commits == [{P0: oam(6), R0: oam(1)}]


# ------------------------------------------------------------------ transient: disk full

DISK_FULL = [
    pytest.param(lambda: bulk_error([write_error(i, 14031, "OutOfDiskSpace: Insufficient disk space")
                                     for i in range(3)]), "Insufficient disk space", id="writeErrors-14031"),
    pytest.param(lambda: OperationFailure("Insufficient disk space to write", 14031), "Insufficient disk space",
                 id="command-14031"),
    pytest.param(lambda: bulk_error([write_error(i, 8, "database or disk is full") for i in range(3)]),
                 "database or disk is full", id="nx-27017-sqlite"),
    pytest.param(lambda: OperationFailure("WiredTiger error (28) [..] No space left on device", 1),
                 "No space left on device", id="wiredtiger-enospc"),
    pytest.param(lambda: OperationFailure("you are over your space quota, using 512 MB of 512 MB", 8000),
                 "over your space quota", id="atlas-quota"),
]


@pytest.mark.parametrize("make_error, message", DISK_FULL)
def test_a_full_disk_stops_commits_is_logged_and_loses_nothing(clock, db_writer, caplog, make_error, message):
    images, results = batch_of(2, 1)
    c = FakeConsumer(clock, {P0: images, R0: results})
    attempts = []

    def full(_ops):
        attempts.append(clock.ms)
        return make_error()

    collection = ScriptedCollection(c.calls, [full] * 4)
    writer, producer = db_writer(c, collection)
    with caplog.at_level(logging.WARNING, logger="consumers.db"):
        writer.run()

    names = c.names()
    writes = [i for i, n in enumerate(names) if n == "bulk_write"]
    assert len(writes) == 5
    assert "commit" not in names[:writes[-1]]            # not committed while the disk is full
    assert c.commits == [{P0: oam(2), R0: oam(1)}]       # ...and everything once it is not
    assert dead_letters(producer) == []                  # nothing given up
    assert [len(ids) for ids in collection.sent] == [3] * 5
    for before, after in zip(writes, writes[1:]):        # it waited, polling paused, in between
        assert "poll" in names[before:after]
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]   # backoff: each wait at least the last
    full_logs = [r for r in caplog.records if "MongoDB disk full" in r.getMessage()]
    assert len(full_logs) == 4, [r.getMessage() for r in caplog.records]
    assert all(r.levelno >= logging.WARNING and message in r.getMessage() for r in full_logs)


# ------------------------------------------------------------------ the classification

@pytest.mark.parametrize("code, errmsg, kind", [
    *[(code, msg, "refused") for code, msg in DETERMINISTIC],
    (10107, "not primary", "transient"),
    (13435, "not primary and secondaryOk=false", "transient"),
    (11602, "operation was interrupted because of a replica set state change", "transient"),
    (91, "shutdown in progress", "transient"),
    (89, "network timeout", "transient"),
    (64, "waiting for replication timed out", "transient"),
    (112, "WriteConflict", "transient"),
    (14031, "Insufficient disk space", "disk full"),
    (8, "database or disk is full", "disk full"),
    (8, "database is locked", "transient"),
    (1, "WiredTiger error: No space left on device", "disk full"),
    (8000, "you are over your space quota", "disk full"),
])
def test_write_error_classification(code, errmsg, kind):
    assert classify_write_error({"index": 0, "code": code, "errmsg": errmsg}) == kind


class Raising:
    def __init__(self, exc):
        self.exc = exc

    def bulk_write(self, ops, ordered=True):
        raise self.exc


@pytest.mark.parametrize("exc, kind", [
    (AutoReconnect("connection closed"), "transient"),
    (NetworkTimeout("timed out"), "transient"),
    (NotPrimaryError("not primary", {"code": 10107}), "transient"),
    (OperationFailure("not authorized on iot to execute command", 13), "transient"),
    (OperationFailure("Insufficient disk space", 14031), "disk full"),
    (bson.errors.InvalidDocument("cannot encode object"), "refused"),
    (OverflowError("MongoDB can only handle up to 8-byte ints"), "refused"),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "refused"),
])
def test_what_the_sink_makes_of_an_exception(exc, kind):
    """A command-level failure is one Transient for the whole batch; a document that cannot
    be encoded is refused (alone: a batch of one)."""
    outcomes = MongoSink(Raising(exc)).write([Upsert("a", {"x": 1})])
    assert len(outcomes) == 1
    outcome = outcomes[0]
    if kind == "refused":
        assert isinstance(outcome, Refused) and type(exc).__name__ in outcome.reason
    else:
        assert isinstance(outcome, Transient) and outcome.kind == kind and not isinstance(outcome, Stored)
    two = MongoSink(Raising(exc)).write([Upsert("a", {"x": 1}), Upsert("b", {"x": 2})])
    if kind != "refused":
        assert two[0] is two[1]  # one failure of the whole write, counted once


# ------------------------------------------------------------------ the write concern settings

def test_write_concern_settings(monkeypatch):
    from common.settings import with_flags

    assert write_concern(MongoSettings()).document == {"w": 1, "j": True}
    monkeypatch.setenv("MONGO_WRITE_CONCERN_W", "majority")
    assert write_concern(MongoSettings()).document == {"w": "majority", "j": True}
    monkeypatch.setenv("MONGO_WRITE_CONCERN_W", "2")
    monkeypatch.setenv("MONGO_WRITE_JOURNAL", "false")
    assert write_concern(MongoSettings()).document == {"w": 2, "j": False}
    for bad in (0, "0", "most"):  # w=0 is unacknowledged: no commit could wait for it
        with pytest.raises(ValueError, match="MONGO_WRITE_CONCERN_W"):
            with_flags(MongoSettings, mongo_write_concern_w=bad)
