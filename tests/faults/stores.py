"""The fault suite's view of the store, MongoDB, PostgreSQL or CouchDB (STORE), and the
storage faults that are PostgreSQL's and CouchDB's own.

:class:`Rows` reads the run's stored images with the store's own client (pymongo, psycopg
and SQL, or CouchDB's HTTP API and a Mango index of the suite's own), never through
common.store, whose writes and reads are what the suite checks.  The PostgreSQL and CouchDB
scenarios are the MongoDB suite's storage scenarios on the other store: the DB writer
killed mid-batch (``db-consumer``, shared), the server killed and restarted on its data
(``postgres-restart``, ``couchdb-restart``: pouchdb-server on disk), one row or document
refused inside a batch (``postgres-rejects-one``, ``couchdb-rejects-one``).
"""

from __future__ import annotations

import time
import uuid

from tests.faults.scenarios import FAULTS, Fault, kill_component, say, wait_for
from tests.support import HANG_GUARD_S

# What a complete stored image has (check_rows) and what the recovery watcher counts.
FIELDS = ("image_id", "image", "prediction", "confidence", "model", "stored_at", "prediction_stored_at")


class Rows:
    """The stored images of one stack, read with the store's own client."""

    def __init__(self, stack):
        self.postgres = stack.env.get("STORE") == "postgres"
        self.couch = CouchRows(stack.env) if stack.env.get("STORE") == "couchdb" else None
        self.conn = None
        if self.postgres:
            self.dsn = stack.env["POSTGRES_DSN"]
        elif self.couch is None:
            self.collection = stack.collection()

    def _sql(self):
        """The connection, made again after the server went away (psycopg does not reconnect)."""
        import psycopg

        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
        return self.conn

    def count_with_prediction(self, producer_id: str) -> int:
        if self.couch is not None:
            return len(self.couch.find(producer_id, with_prediction=True))
        if self.postgres:
            return self._sql().execute("SELECT count(*) FROM iot_image_data WHERE producer_id = %s "
                                     "AND prediction IS NOT NULL", (producer_id,)).fetchone()[0]
        return self.collection.count_documents({"producer_id": producer_id, "prediction": {"$exists": True}})

    def documents(self, producer_id: str) -> list[dict]:
        """The producer's stored images: ``image_id`` and FIELDS, absent when not stored."""
        if self.couch is not None:
            return self.couch.documents(producer_id)
        if self.postgres:
            cur = self._sql().execute(f"SELECT {', '.join(FIELDS)} FROM iot_image_data WHERE producer_id = %s",
                                    (producer_id,))
            return [{k: v for k, v in zip(FIELDS, row) if v is not None} for row in cur.fetchall()]
        docs = self.collection.find({"producer_id": producer_id}, {f: 1 for f in FIELDS if f != "image_id"})
        return [{"image_id": d.pop("_id"), **d} for d in docs]

    def close(self) -> None:
        if self.couch is not None:
            self.couch.session.close()
        elif self.postgres:
            if self.conn is not None:
                self.conn.close()
        else:
            self.collection.database.client.close()


class CouchRows:
    """The run's documents in CouchDB, found with Mango (``_find``) on an index of the suite's
    own (design document ``_design/faults``), not the pipeline's views."""

    def __init__(self, env: dict):
        import requests

        self.url = f"{env['COUCHDB_URL']}/img_db"
        self.session = requests.Session()
        self.session.auth = (env["COUCHDB_USER"], env["COUCHDB_PASSWORD"])
        self.indexed = False

    def find(self, producer_id: str, with_prediction: bool = False) -> list[dict]:
        if not self.indexed:
            self.session.post(f"{self.url}/_index", json={"index": {"fields": ["producer_id"]}, "ddoc": "faults",
                                                          "name": "by-producer"}, timeout=30).raise_for_status()
            self.indexed = True
        selector: dict = {"producer_id": producer_id}
        if with_prediction:
            selector["prediction"] = {"$exists": True}
        r = self.session.post(f"{self.url}/_find", json={"selector": selector, "limit": 10**9}, timeout=60)
        r.raise_for_status()
        return r.json()["docs"]

    def documents(self, producer_id: str) -> list[dict]:
        out = []
        for d in self.find(producer_id):
            doc = {"image_id": d["_id"], **{k: d[k] for k in FIELDS if k in d}}
            stub = (d.get("_attachments") or {}).get("image")
            if stub:
                doc["image"] = stub
            out.append(doc)
        return out


def postgres_rejects_one(stack, note: dict) -> tuple[float, float]:
    """PostgreSQL refuses one row of a batch while the run's images stream through the DB
    consumer: a unique index on (seq, producer_id) (one the pipeline never creates) and two
    valid images of another producer with the same seq under two image ids.  The second
    one's insert violates it (SQLSTATE 23505) inside a transaction of the run's rows: the
    DB consumer must dead-letter exactly that record (with PostgreSQL's reason), store
    everything else of the batch and go on, never retry it for ever."""
    import psycopg
    from kafka import KafkaConsumer, TopicPartition

    from common.deadletter import read_dead_letter
    from common.kafka_io import client_config, make_producer
    from common.schema import dumps
    from tests.hostile import valid_message

    settings = stack.kafka()
    tag = f"pg-reject-{uuid.uuid4().hex[:6]}"
    index = f"fault_unique_seq_producer_{uuid.uuid4().hex[:6]}"
    conn = psycopg.connect(stack.env["POSTGRES_DSN"], autocommit=True)
    conn.execute(f"CREATE UNIQUE INDEX {index} ON iot_image_data (seq, producer_id)")
    dlq = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False,
                        auto_offset_reset="latest", fetch_max_wait_ms=200)
    tps = [TopicPartition(settings.dlq_topic, p) for p in dlq.partitions_for_topic(settings.dlq_topic)]
    dlq.assign(tps)
    for tp in tps:
        dlq.position(tp)  # pin "latest" before anything is sent
    first, second = (valid_message(tag, 7, seed=s, device=f"{tag}-cam") for s in (1, 2))
    ids = sorted({first["image_id"], second["image_id"]})
    t0 = time.time()
    producer = make_producer(settings)
    try:
        for msg in (first, second):  # one key: one partition, in this order
            producer.send(settings.images_topic, key=msg["device_id"].encode(), value=dumps(msg))
        producer.flush()
        letters: list = []

        def rejected() -> bool:
            for batch in dlq.poll(timeout_ms=200).values():
                letters.extend(d for d in map(read_dead_letter, batch) if d.image_id() in ids)
            stored = conn.execute("SELECT count(*) FROM iot_image_data WHERE image_id = ANY(%s) "
                                  "AND prediction IS NOT NULL", (ids,)).fetchone()[0]
            return stored == 1 and any("SQLSTATE 23505" in d.reason for d in letters)

        wait_for(rejected, HANG_GUARD_S, "one of the two images stored, the other dead-lettered (23505)")
        t1 = time.time()
        (winner,) = conn.execute("SELECT image_id FROM iot_image_data WHERE image_id = ANY(%s)", (ids,)).fetchone()
        note.update(stored=winner, dead_lettered=sorted(set(ids) - {winner}),
                    dead_letters=[{"topic": d.source_topic, "partition": d.source_partition,
                                   "offset": d.source_offset, "reason": d.reason[:160]} for d in letters])
        # Both records of the refused image (the image and its result) go to the DLQ; the
        # stored one never does.
        assert {d.image_id() for d in letters} == set(ids) - {winner}, note
    finally:
        producer.close()
        dlq.close()
        try:
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        except psycopg.Error as exc:
            say(f"could not drop the index {index}: {exc}")
        conn.close()
    return t0, t1


def couchdb_rejects_one(stack, note: dict) -> tuple[float, float]:
    """CouchDB refuses one document of a batch while the run's images stream through the DB
    consumer: a validate_doc_update function (one the pipeline never installs) forbids the
    document of one of two valid images of another producer.  CouchDB answers ``forbidden``
    for that document inside a _bulk_docs of the run's documents: the DB consumer must
    dead-letter exactly its records (with CouchDB's reason), store everything else of the
    batch and go on, never retry it for ever."""
    import requests

    from common.schema import dumps
    from tests.hostile import valid_message

    tag = f"couch-reject-{uuid.uuid4().hex[:6]}"
    first, second = (valid_message(tag, 7, seed=s, device=f"{tag}-cam") for s in (1, 2))
    ids = {first["image_id"], second["image_id"]}
    design = f"{stack.env['COUCHDB_URL']}/img_db/_design/fault-refuse-{uuid.uuid4().hex[:6]}"
    session = requests.Session()
    session.auth = (stack.env["COUCHDB_USER"], stack.env["COUCHDB_PASSWORD"])
    made = session.put(design, json={"validate_doc_update": (
        f"function (doc) {{ if (doc._id === '{second['image_id']}') "
        f"{{ throw({{forbidden: 'refused by the fault suite'}}); }} }}")}, timeout=30)
    made.raise_for_status()
    rows = CouchRows(stack.env)
    dlq = _DlqFrom(stack.kafka())
    t0 = time.time()
    try:
        dlq.send(stack.kafka(), [dumps(first), dumps(second)], first["device_id"])
        letters: list = []

        def rejected() -> bool:
            letters.extend(d for d in dlq.poll() if d.image_id() in ids)
            stored = {d["_id"] for d in rows.find(tag, with_prediction=True)}
            return stored == {first["image_id"]} and any("forbidden" in d.reason for d in letters)

        wait_for(rejected, HANG_GUARD_S, "the first image stored, the second dead-lettered (forbidden)")
        t1 = time.time()
        note.update(stored=first["image_id"], dead_lettered=[second["image_id"]],
                    dead_letters=[{"topic": d.source_topic, "partition": d.source_partition,
                                   "offset": d.source_offset, "reason": d.reason[:160]} for d in letters])
        assert {d.image_id() for d in letters} == {second["image_id"]}, note
    finally:
        dlq.close()
        rev = session.get(design, timeout=30).json().get("_rev")
        if rev and session.delete(design, params={"rev": rev}, timeout=30).status_code not in (200, 202):
            say(f"could not delete {design}")
        session.close()
        rows.session.close()
    return t0, t1


class _DlqFrom:
    """The dead-letter topic read from its end, as of now, and images sent on one key."""

    def __init__(self, settings):
        from kafka import KafkaConsumer, TopicPartition

        from common.kafka_io import client_config

        self.consumer = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="latest", fetch_max_wait_ms=200)
        tps = [TopicPartition(settings.dlq_topic, p) for p in self.consumer.partitions_for_topic(settings.dlq_topic)]
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.position(tp)  # pin "latest" before anything is sent

    @staticmethod
    def send(settings, values: list[bytes], key: str) -> None:
        from common.kafka_io import make_producer

        producer = make_producer(settings)
        try:
            for value in values:  # one key: one partition, in this order
                producer.send(settings.images_topic, key=key.encode(), value=value)
            producer.flush()
        finally:
            producer.close()

    def poll(self) -> list:
        from common.deadletter import read_dead_letter

        return [read_dead_letter(r) for batch in self.consumer.poll(timeout_ms=200).values() for r in batch]

    def close(self) -> None:
        self.consumer.close()


POSTGRES_FAULTS = {f.name: f for f in [
    Fault("postgres-restart", "SIGKILL the PostgreSQL server; restarted on its data (crash recovery)",
          "storage", kill_component("postgres")),
    Fault("postgres-rejects-one", "PostgreSQL refuses one row of a batch (23505 on a unique index)",
          "storage", postgres_rejects_one),
]}
COUCH_FAULTS = {f.name: f for f in [
    Fault("couchdb-restart", "SIGKILL pouchdb-server (CouchDB's HTTP API); restarted on its data on disk",
          "storage", kill_component("couchdb")),
    Fault("couchdb-rejects-one", "CouchDB refuses one document of a batch (a validate_doc_update: forbidden)",
          "storage", couchdb_rejects_one),
]}
# The storage scenarios, on PostgreSQL and on CouchDB.
POSTGRES_SCENARIOS = ["db-consumer", *POSTGRES_FAULTS]
COUCH_SCENARIOS = ["db-consumer", *COUCH_FAULTS]
ALL_FAULTS = {**FAULTS, **POSTGRES_FAULTS, **COUCH_FAULTS}
