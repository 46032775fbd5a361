"""The DB consumer against the real nx-27017 server (MongoDB wire protocol), started here.

* Durability: the ``update`` commands of the bulk_write carry the write concern of
  MONGO_WRITE_JOURNAL / MONGO_WRITE_CONCERN_W (``j: true`` by default).  nx-27017 may
  ignore it, so a pymongo CommandListener registered on the MongoClient checks what
  the client sends.
* Errors from the real server and the real driver, per record: a duplicate key (a
  unique index the pipeline never creates, added here) and a value BSON cannot encode
  end in the DLQ with their reason, partition and offset; the rest ends in MongoDB and
  everything is committed.

Kafka is the fake consumer/producer of tests/fakes.py; only nx-27017 runs.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import threading
import time

import pytest
from pymongo import ASCENDING, MongoClient, monitoring

from common.settings import MongoSettings
from common.store import mongodb
from tests.binaries import venv_tool
from tests.fakes import (GUARD_PAUSED_POLLS, P0, R0, FakeConsumer, RecordingProducer, dead_letters,
                         image_id_of, image_value, kafka_settings, oam, origin, poison, result_value,
                         stop_after_paused_polls, stop_when_drained)
from tests.support import HANG_GUARD_S


@pytest.fixture
def mongo_uri(tmp_path):
    """A fresh nx-27017 server on a free port, stopped after the test."""
    server = venv_tool("nx-27017")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path / "mongo"
    d.mkdir()
    proc = subprocess.Popen([str(server), "--host", "127.0.0.1", "-p", str(port), "--db", str(d / "m.db"),
                             "--log-file", str(d / "nx.log"), "--pid-file", str(d / "nx.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"nx-27017 exited with {proc.returncode}"
                assert time.monotonic() < deadline, "nx-27017 did not open its port"
                time.sleep(0.1)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class UpdateCommands(monitoring.CommandListener):
    """Every ``update`` command the client sends (a copy of the command document)."""

    def __init__(self):
        self.commands: list[dict] = []

    def started(self, event):
        if event.command_name == "update":
            self.commands.append(dict(event.command))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


@pytest.fixture
def run_against(monkeypatch, clock, mongo_uri):
    """Run a DbWriter (real MongoClient with a command listener, fake Kafka) until drained."""
    from consumers import db

    listener = UpdateCommands()
    monkeypatch.setattr(mongodb, "MongoClient", functools.partial(MongoClient, event_listeners=[listener]))

    def run(consumer, before=None):
        producer = RecordingProducer(consumer.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: consumer)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        sink = mongodb.MongoSink.open(MongoSettings(mongo_uri=mongo_uri))
        writer, loop = db.make_loop(kafka_settings(), sink, stop)
        if before is not None:
            before(sink.collection)
        consumer.hooks.append(stop_when_drained(stop))
        consumer.hooks.append(stop_after_paused_polls(stop, GUARD_PAUSED_POLLS))
        writer.prepare(stop)
        loop.run()
        sink.close()
        return producer, listener
    return run


def stored(mongo_uri) -> dict:
    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=int(HANG_GUARD_S * 1000))
    try:
        return {d["_id"]: d for d in client.iot.images.find({}, {"image": 0})}
    finally:
        client.close()


@pytest.mark.parametrize("env, expected", [({}, {"w": 1, "j": True}),
                                           ({"MONGO_WRITE_CONCERN_W": "majority"}, {"w": "majority", "j": True}),
                                           ({"MONGO_WRITE_JOURNAL": "false"}, {"w": 1, "j": False})])
def test_the_update_commands_carry_the_write_concern(clock, run_against, monkeypatch, mongo_uri, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    images, results = [image_value(i) for i in range(3)], [result_value(0)]
    c = FakeConsumer(clock, {P0: images, R0: results})
    _, listener = run_against(c)

    assert listener.commands, "no update command was sent"
    for command in listener.commands:
        assert command.get("writeConcern") == expected, command.get("writeConcern")
    assert set(stored(mongo_uri)) == {image_id_of(v) for v in images + results}
    assert c.commits == [{P0: oam(3), R0: oam(1)}]


def test_a_duplicate_key_from_the_server_dead_letters_that_record_only(clock, run_against, mongo_uri):
    # image_value(0) twice: the same producer_id and seq under two image ids
    images = [image_value(0), image_value(1), image_value(0), image_value(2)]
    results = [result_value(5)]
    c = FakeConsumer(clock, {P0: images, R0: results})

    def unique_index(collection):
        collection.create_index([("producer_id", ASCENDING), ("seq", ASCENDING)], unique=True,
                                name="test_unique_producer_seq")

    producer, _ = run_against(c, before=unique_index)

    letters = dead_letters(producer)
    assert [origin(d) for d in letters] == [(P0.topic, 0, 2)]
    assert "11000" in letters[0].reason and letters[0].value == images[2], letters[0].reason
    assert set(stored(mongo_uri)) == {image_id_of(v) for i, v in enumerate(images + results) if i != 2}
    assert c.commits == [{P0: oam(4), R0: oam(1)}]


def test_a_value_bson_cannot_encode_dead_letters_that_record_only(clock, run_against, monkeypatch, mongo_uri):
    poison(monkeypatch, {1: {"sent_at": 2 ** 70}})
    images, results = [image_value(i) for i in range(3)], [result_value(0)]
    c = FakeConsumer(clock, {P0: images, R0: results})
    producer, _ = run_against(c)  # the OverflowError never escapes the loop

    letters = dead_letters(producer)
    assert [origin(d) for d in letters] == [(P0.topic, 0, 1)]
    assert "OverflowError" in letters[0].reason and letters[0].value == images[1], letters[0].reason
    docs = stored(mongo_uri)
    assert set(docs) == {image_id_of(v) for i, v in enumerate(images + results) if i != 1}
    assert c.commits == [{P0: oam(3), R0: oam(1)}]


def test_an_image_and_its_result_polled_together_are_one_upsert(clock, run_against, mongo_uri):
    """One write per image where possible: the image and its result in the same poll are
    merged into one upsert (both records committed with it); a lone image is its own."""
    import json

    from common.schema import dumps, make_result_message

    image = json.loads(image_value(0))
    result = {**make_result_message(image, prediction="cat", confidence=0.5, model="m", received_at=1.0,
                                    inferred_at=1.0), "published_at": 1.0}
    lone = image_value(1)
    c = FakeConsumer(clock, {P0: [dumps(image), lone], R0: [dumps(result)]})
    producer, listener = run_against(c)

    updates = [u for command in listener.commands for u in command["updates"]]
    assert len(updates) == 2, updates  # 3 records, 2 documents
    assert not dead_letters(producer)
    docs = stored(mongo_uri)
    assert set(docs) == {image["image_id"], image_id_of(lone)}
    pair = docs[image["image_id"]]
    assert pair["prediction"] == "cat" and pair["seq"] == 0 and pair["dataset"] == "test"
    assert pair["stored_at"] > 0 and pair["prediction_stored_at"] > 0
    assert c.commits == [{P0: oam(2), R0: oam(1)}]
