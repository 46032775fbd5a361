"""Retention (consumers/retention.py, the adapters' ``expiring`` / ``delete``, common/archive.py)
against each real store started here: nx-27017 (MongoDB), PostgreSQL, pouchdb-server (CouchDB).

Age is injected through the documents' own timestamps (the sink's ``now``), not by waiting:
old images (stored 10 days ago), recent ones, and an old result whose image never came.
With STORE_RETENTION_DAYS=7 exactly the old ones are deleted, a batch at a time, each batch
archived first; the archive reads back to the same documents and image bytes.  What is left
in the store is checked with the store's own client (pymongo, SQL, HTTP), not the reader
under test.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from pymongo import MongoClient

from common.archive import archives, read_archive
from common.settings import MongoSettings, RetentionSettings
from common.store import IMAGE, PREDICTION, STORED_AT, image_upsert, result_upsert
from common.store.couchdb import CouchSink
from common.store.couchdb_reader import CouchReader
from common.store.mongodb import MongoReader, MongoSink
from common.store.postgres import PostgresReader, PostgresSink
from consumers import retention
from tests import couch, pg
from tests.binaries import mount_tmpfs
from tests.support import HANG_GUARD_S, ROOT
from tests.unit.test_db_mongo_wire import mongo_uri  # noqa: F401  (a fixture)
from tests.unit.test_db_postgres_wire import as_result, msg, result

NOW = 1_800_000_000.0
DAY = 86_400.0


@pytest.fixture(scope="module")
def pg_server():
    d = pg.reachable_dir("iot-pg-retention-")
    s = pg.PostgresServer(d)
    try:
        yield s.start()
    finally:
        s.stop()
        pg.remove(d)


@pytest.fixture(scope="module")
def couch_server(tmp_path_factory):
    s = couch.CouchServer(tmp_path_factory.mktemp("couch-retention"))
    try:
        yield s.start()
    finally:
        s.stop()


class Store:
    """One store under test: its sink, its reader, and the ids it holds (read with its own client)."""

    def __init__(self, sink, reader, ids):
        self.sink, self.reader, self.ids = sink, reader, ids


@pytest.fixture(params=["mongodb", "postgres", "couchdb"])
def store(request, tmp_path):
    if request.param == "mongodb":
        uri = request.getfixturevalue("mongo_uri")
        s = MongoSettings(mongo_uri=uri)
        client = MongoClient(uri)
        made = Store(MongoSink.open(s), MongoReader(s),
                     lambda: {d["_id"] for d in client.iot.images.find({}, {"_id": 1})})
    elif request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        with pg.connect(server.dsn) as conn:
            conn.execute("DROP TABLE IF EXISTS iot_image_data, iot_schema_version, iot_dlq_replays")
        made = Store(PostgresSink.open(server.settings()), PostgresReader(server.settings()),
                     lambda: set(pg.rows(server.dsn)))
    else:
        server = request.getfixturevalue("couch_server")
        couch.reset(server)
        made = Store(CouchSink.open(server.settings()), CouchReader(server.settings()),
                     lambda: set(couch.documents(server.url, server.auth)))
    made.sink.prepare()
    yield made
    made.sink.close()
    made.reader.close()


def fill(store: Store) -> tuple[dict, dict, str]:
    """5 old complete images, 3 recent ones, 1 old result whose image never came:
    (old id -> (message, image bytes)), (recent id -> ...), the orphan result's id."""
    old, recent = {}, {}
    batch = []
    for n in range(8):
        m, image = msg(n, label=f"label-{n}"), f"png-{n}".encode() * 10
        stored = NOW - (10 + n) * DAY if n < 5 else NOW - n * 0.1 * DAY
        (old if n < 5 else recent)[m["image_id"]] = (m, image)
        batch += [image_upsert(m, image, stored),
                  result_upsert(as_result(result(n, image_id=m["image_id"], prediction=f"p{n}")), stored + 1)]
    orphan = result(9, prediction="orphan")
    batch.append(result_upsert(as_result(orphan), NOW - 30 * DAY))
    assert all(type(o).__name__ == "Stored" for o in store.sink.write(batch))
    return old, recent, orphan["image_id"]


def test_old_images_are_archived_then_deleted_and_the_archive_reads_back(store, tmp_path, capsys):
    old, recent, orphan = fill(store)
    settings = RetentionSettings(store_retention_days=7, store_archive_dir=str(tmp_path / "archive"),
                                 store_retention_batch=2)
    dry = retention.expire(store.reader, settings, now=NOW, dry_run=True)
    assert (dry.kept, dry.deleted) == (6, 0) and store.ids() == {*old, *recent, orphan}

    done = retention.expire(store.reader, settings, now=NOW)

    assert (done.deleted, done.archived, done.kept) == (6, 6, 0)
    assert store.ids() == set(recent)
    [path] = archives(tmp_path / "archive")
    assert path == done.archive and (path.stat().st_mode & 0o777) == 0o600
    docs = {d["image_id"]: d for d in read_archive(path)}
    assert set(docs) == {*old, orphan}
    for image_id, (m, image) in old.items():
        assert docs[image_id][IMAGE] == image
        assert docs[image_id]["label"] == m["label"] and docs[image_id]["seq"] == m["seq"]
        assert docs[image_id][PREDICTION].startswith("p") and docs[image_id][STORED_AT] < NOW - 7 * DAY
    assert docs[orphan][PREDICTION] == "orphan" and IMAGE not in docs[orphan]
    # Oldest first: the archive's order is the order they expired in.
    ages = [d.get(STORED_AT, d.get("prediction_stored_at")) for d in read_archive(path)]
    assert ages == sorted(ages)

    # The reader tool, as a user runs it.
    assert retention.main(["archive", "list", str(tmp_path / "archive")]) == 0
    assert f"{path.name}  6 images" in capsys.readouterr().out
    assert retention.main(["archive", "read", str(path), "--images", str(tmp_path / "files")]) == 0
    listed = capsys.readouterr().out
    assert all(image_id in listed for image_id in old)
    for image_id, (_, image) in old.items():
        assert (tmp_path / "files" / f"{image_id}.png").read_bytes() == image

    again = retention.expire(store.reader, settings, now=NOW)
    assert (again.deleted, again.archive) == (0, None) and store.ids() == set(recent)


def test_without_an_archive_directory_old_images_are_deleted_only(store, tmp_path):
    old, recent, orphan = fill(store)
    done = retention.expire(store.reader, RetentionSettings(store_retention_days=7), now=NOW)
    assert (done.deleted, done.archived, done.archive) == (6, 0, None)
    assert store.ids() == set(recent)


def test_zero_days_keeps_everything(store):
    old, recent, orphan = fill(store)
    done = retention.expire(store.reader, RetentionSettings(store_retention_days=0), now=NOW + 1000 * DAY)
    assert done.deleted == 0 and store.ids() == {*old, *recent, orphan}


def test_the_db_consumers_thread_applies_it_until_stopped(pg_server, tmp_path):
    with pg.connect(pg_server.dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS iot_image_data, iot_schema_version, iot_dlq_replays")
    sink = PostgresSink.open(pg_server.settings())
    sink.prepare()
    now = time.time()
    stale, fresh = msg(1), msg(2)
    sink.write([image_upsert(stale, b"old", now - 3 * DAY), image_upsert(fresh, b"new", now)])
    stop = threading.Event()
    settings = RetentionSettings(store_retention_days=1, store_retention_interval_s=0.2,
                                 store_archive_dir=str(tmp_path / "a"))
    thread = retention.start(settings, lambda: PostgresReader(pg_server.settings()), stop)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while stale["image_id"] in pg.rows(pg_server.dsn):
            assert time.monotonic() < deadline, "the retention thread deleted nothing"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(HANG_GUARD_S)
        sink.close()
    assert not thread.is_alive()
    assert set(pg.rows(pg_server.dsn)) == {fresh["image_id"]}
    assert [d["image_id"] for d in read_archive(archives(tmp_path / "a")[0])] == [stale["image_id"]]
    assert retention.start(RetentionSettings(), lambda: pytest.fail("opened a reader"), stop) is None


def test_the_command_runs_once_against_the_configured_store(pg_server, tmp_path):
    with pg.connect(pg_server.dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS iot_image_data, iot_schema_version, iot_dlq_replays")
    sink = PostgresSink.open(pg_server.settings())
    sink.prepare()
    stale, fresh = msg(1), msg(2)
    sink.write([image_upsert(stale, b"old", time.time() - 40 * DAY), image_upsert(fresh, b"new", time.time())])
    sink.close()
    env = {"PATH": "/usr/bin:/bin", "STORE": "postgres", "POSTGRES_DSN": pg_server.dsn, "STORE_RETENTION_DAYS": "30"}

    def command(*args):
        return subprocess.run([sys.executable, "-m", "consumers.retention", "run", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=HANG_GUARD_S)

    dry = command("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 image(s)" in dry.stdout and len(pg.rows(pg_server.dsn)) == 2
    done = command("--archive-dir", str(tmp_path / "arch"))
    assert done.returncode == 0, done.stderr
    assert "deleted 1 image(s)" in done.stdout and "archived first to" in done.stdout
    assert set(pg.rows(pg_server.dsn)) == {fresh["image_id"]}
    assert pg_server.dsn.split("@")[0].split(":")[-1] not in done.stdout + done.stderr  # no password printed


def test_an_archive_that_cannot_be_written_deletes_nothing(pg_server, tmp_path):
    """The archive's own disk full (a real 64 KB tmpfs, root only): the pass fails, the store keeps every image."""
    with pg.connect(pg_server.dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS iot_image_data, iot_schema_version, iot_dlq_replays")
    sink = PostgresSink.open(pg_server.settings())
    sink.prepare()
    stale = [msg(n) for n in range(40)]
    sink.write([image_upsert(m, bytes(4096), NOW - 30 * DAY) for m in stale])
    sink.close()
    small = tmp_path / "small"
    small.mkdir()
    mount_tmpfs(small, "size=64k")
    try:
        reader = PostgresReader(pg_server.settings())
        settings = RetentionSettings(store_retention_days=7, store_archive_dir=str(small), store_retention_batch=100)
        with pytest.raises(OSError):
            retention.expire(reader, settings, now=NOW)
        reader.close()
        assert set(pg.rows(pg_server.dsn)) == {m["image_id"] for m in stale}
        assert list(read_archive(archives(small)[0])) == []  # cut back: no half batch
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_store_that_cannot_be_reached_is_tried_again_at_the_next_interval(caplog):
    from common.store import StoreError

    class Down:
        name, where, calls, closed = "PostgreSQL", "postgresql://iot@127.0.0.1:1/iot", 0, False

        def expiring(self, *_a):
            Down.calls += 1
            if Down.calls >= 3:
                stop.set()
            raise StoreError("connection refused")

        def close(self):
            Down.closed = True

    stop = threading.Event()
    retention.every(Down(), RetentionSettings(store_retention_days=1, store_retention_interval_s=0.01), stop)
    assert Down.calls == 3 and Down.closed
    assert caplog.text.count("retention of postgresql://iot@127.0.0.1:1/iot failed (connection refused)") == 3
