"""A full disk under each store, for real: the server's data lives on a small tmpfs (mounted
here; root only, skipped otherwise) filled until a few hundred KB are left, and the DB
consumer (real sink, fake Kafka of tests/fakes.py) is handed more images than fit.

What each server answers: PostgreSQL ``could not extend file ...: No space left on device``
(SQLSTATE 53100); nx-27017 (MongoDB on SQLite) ``code 8: database or disk is full``
(SQLITE_FULL) for some documents of the bulk write; pouchdb-server (CouchDB on leveldown) HTTP
500 ``bad_request`` "IO error: ...: No space left on device" for the whole ``_bulk_docs``.
The writer must treat each as transient, kind "disk full": log at ERROR that the disk is full
and which store, commit nothing, dead-letter nothing, and retry until the space is freed;
then every image is stored exactly once with its prediction and the offsets are committed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from pymongo import MongoClient

from common.schema import dumps, encode_png, make_image_message
from common.settings import MongoSettings
from common.store.couchdb import CouchSink
from common.store.mongodb import MongoSink
from common.store.postgres import PostgresSink
from stack.ports import free_port
from tests import couch, pg
from tests.binaries import mount_tmpfs, venv_tool
from tests.support import HANG_GUARD_S
from tests.fakes import (P0, R0, FakeConsumer, RecordingProducer, at_poll, dead_letters, kafka_settings, oam,
                         stop_after_paused_polls, stop_when_drained)
from tests.unit.test_db_postgres_wire import result

IMAGES = 300
LEFT_BYTES = 256 * 1024


@pytest.fixture
def small_disk():
    """A directory the postgres user can reach whose ``data/`` is a 64 MB tmpfs of its own."""
    d = pg.reachable_dir("iot-pg-full-")
    data = d / "data"
    data.mkdir()
    try:
        mount_tmpfs(data, "size=64m,mode=0711")
    except BaseException:  # skipped or failed: the directory goes all the same
        pg.remove(d)
        raise
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
        pg.remove(d)


def fill(directory, leave: int) -> os.PathLike:
    """A file in ``directory`` taking all its filesystem's space but ``leave`` bytes."""
    st = os.statvfs(directory)
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def noisy_image_value(seq: int) -> bytes:
    """An image message whose PNG (random pixels) does not compress: ~3 KB that PostgreSQL must store."""
    png = encode_png(np.random.default_rng(seq).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    msg = make_image_message(image=png, device_id="dev", producer_id="full", seq=seq, label=None, dataset="test")
    return dumps({**msg, "sent_at": 1.0})


class Server:
    """One store's server with its data on the small disk: its sink, and what it holds read
    with its own client (SQL, pymongo, HTTP)."""

    def __init__(self, kind: str, directory):
        self.kind, self.procs = kind, []
        if kind == "postgres":
            self.server = pg.PostgresServer(directory).start()
            self.sink = PostgresSink.open(self.server.settings())
        elif kind == "couchdb":
            self.server = couch.CouchServer(directory).start()
            self.sink = CouchSink.open(self.server.settings())
        else:
            self.server, self.uri = None, start_nx(directory / "data", self.procs)
            self.sink = MongoSink.open(MongoSettings(mongo_uri=self.uri))

    def documents(self) -> dict[str, dict]:
        if self.kind == "postgres":
            return pg.rows(self.server.dsn)
        if self.kind == "couchdb":
            return couch.documents(self.server.url, self.server.auth)
        with MongoClient(self.uri) as client:
            return {d.pop("_id"): {**d, "image": bytes(d["image"]) if "image" in d else None}
                    for d in client.iot.images.find()}

    def stop(self) -> None:
        self.sink.close()
        if self.server is not None:
            self.server.stop()
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=HANG_GUARD_S)


def start_nx(data, procs) -> str:
    """nx-27017 (the local stack's MongoDB, on SQLite) with its database file in ``data``."""
    port = free_port()
    procs.append(subprocess.Popen([str(venv_tool("nx-27017")), "--host", "127.0.0.1", "-p", str(port), "--db",
                                   str(data / "m.db"), "--log-file", str(data.parent / "nx.log")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"mongodb://127.0.0.1:{port}"
        except OSError:
            assert procs[-1].poll() is None and time.monotonic() < deadline, "nx-27017 did not start"
            time.sleep(0.1)


@pytest.mark.parametrize("kind", ["postgres", "mongodb", "couchdb"])
def test_a_full_disk_stops_intake_loses_nothing_and_resumes_when_space_is_freed(kind, small_disk, clock,
                                                                               monkeypatch, caplog):
    from consumers import db

    server = Server(kind, small_disk)
    sink = server.sink
    try:
        images = [noisy_image_value(i) for i in range(IMAGES)]
        ids = [json.loads(v)["image_id"] for v in images]
        results = [dumps({**result(i, image_id=ids[i]), "producer_id": "full"}) for i in range(IMAGES)]
        c = FakeConsumer(clock, {P0: images, R0: results})
        producer = RecordingProducer(c.calls)
        monkeypatch.setattr(db, "make_consumer", lambda *a, **k: c)
        monkeypatch.setattr(db, "make_producer", lambda *a, **k: producer)
        stop = threading.Event()
        writer, loop = db.make_loop(kafka_settings(), sink, stop)
        writer.prepare(stop)
        filler = fill(small_disk / "data", LEFT_BYTES)
        freed = []

        def free_space(_consumer):
            freed.append(len(c.commits))
            filler.unlink()

        c.hooks.append(at_poll(8, free_space))  # some paused polls into the retries
        c.hooks.append(stop_when_drained(stop))
        c.hooks.append(stop_after_paused_polls(stop, 200))
        with caplog.at_level(logging.WARNING, logger="consumers.db"):
            loop.run()

        failed = [r.getMessage() for r in caplog.records if r.name == "consumers.db" and r.levelno >= logging.WARNING]
        assert failed, "no write failed: the test did not fill the disk"
        assert f"{sink.name} disk full at {sink.where}" in failed[0] and "intake stopped" in failed[0], failed
        assert freed == [0], "something was committed while the disk was full"
        assert not dead_letters(producer)
        docs = server.documents()
        assert sorted(docs) == sorted(ids)  # each image once (the image id is the key)
        assert all(len(d["image"]) > 2000 and d["prediction"] == "cat" for d in docs.values())
        committed = {}
        for commit in c.commits:  # polls of at most 500 records: more than one commit
            committed.update(commit)
        assert committed == {P0: oam(IMAGES), R0: oam(IMAGES)}
    finally:
        server.stop()


def test_the_store_refusing_for_a_full_disk_is_retried_not_refused():
    """The classification the test above relies on, for each store's words for it."""
    from common.store import DISK_FULL
    from common.store.couchdb_http import failure
    from common.store.postgres import classify

    class PgError(Exception):
        sqlstate = "53100"

    assert classify(PgError("could not extend file \"base/16384/16390\": No space left on device")) == DISK_FULL

    class Answer:
        status_code, text = 500, ""

        @staticmethod
        def json():
            return {"error": "unknown_error", "reason": "IO error: ENOSPC: no space left on device, write"}

    assert failure(Answer()).kind == DISK_FULL
