"""``python -m consumers.db``: images and results topics -> MongoDB ``iot.images``.

Every message becomes an idempotent ``UpdateOne({_id: image_id}, ..., upsert=True)``;
a poll's worth go to MongoDB in one unordered ``bulk_write`` and the offsets are
committed only after it succeeded.  Image and result touch disjoint fields, so
either order of arrival (and any redelivery) ends in one complete document.
``stored_at`` / ``prediction_stored_at`` use ``$min`` so a redelivery never moves
the first time a part was stored.

Invalid image messages are skipped here: the inference consumer, which reads the
same topic, is the one that dead-letters them (one DLQ record per bad message).
Invalid result messages are dead-lettered here.

Write errors are handled per record, so that whatever one record does it ends in
MongoDB or in the DLQ (reason, partition, offset), never blocks its partition and
never crashes the consumer.  Each error of a ``BulkWriteError`` names the index of its
operation, which maps back to the Kafka record.  A *deterministic* error (the
document itself is refused: it would fail the same way forever) dead-letters that
record with the error's code and message; a *transient* one (the server or the
network is not able to take writes now) is retried, alone, with backoff while the
partitions are polled paused; the offsets are committed once every record is
written or dead-lettered.  Writes use write concern ``w: MONGO_WRITE_CONCERN_W``
(1; "majority" on a replica set, as on the VMs) and ``j: MONGO_WRITE_JOURNAL``
(true), so an acknowledged write survives a mongod crash before the commit.

| where the error is | error (class, or code name / code) | handling |
|---|---|---|
| ``writeErrors[i]`` | NotWritablePrimary 10107, NotPrimaryNoSecondaryOk 13435, NotPrimaryOrSecondary 13436, PrimarySteppedDown 189, ShutdownInProgress 91, InterruptedAtShutdown 11600, InterruptedDueToReplStateChange 11602, Interrupted 11601, HostUnreachable 6, HostNotFound 7, NetworkTimeout 89, SocketException 9001, NetworkInterfaceExceededTimeLimit 202, ExceededTimeLimit 262, MaxTimeMSExpired 50, LockTimeout 24, WriteConflict 112, TemporarilyUnavailable 365, WriteConcernFailed 64, UnknownReplWriteConcern 79, UnsatisfiableWriteConcern 100, Unauthorized 13, AuthenticationFailed 18, StaleShardVersion 63, StaleEpoch 150, StaleConfig 13388; "database is locked" (nx-27017/SQLite) | transient: that record retried |
| ``writeErrors[i]`` | disk full: OutOfDiskSpace 14031, or a message saying so ("No space left on device", "disk is full", "Insufficient disk space", "over your space quota") | transient, logged at ERROR as "MongoDB disk full" |
| ``writeErrors[i]`` | any other code: DocumentValidationFailure 121, DuplicateKey 11000 (``_id`` upserts cannot collide, so another unique index refused it), document too large 17419 / BSONObjectTooLarge 10334, DollarPrefixedFieldName 52, EmptyFieldName 56, DottedFieldName 57, BadValue 2, TypeMismatch 14, ImmutableField 66, ... | deterministic: that record dead-lettered |
| ``writeConcernErrors`` | any (the writes were applied but not made as durable as asked) | transient: every record not dead-lettered retried |
| raised before the write (client side) | ``bson.errors.BSONError`` (InvalidDocument, DocumentTooLarge, InvalidStringData), ``OverflowError`` (integer over 8 bytes), ``UnicodeError`` (lone surrogate) | deterministic: the batch is split until the record(s) that cannot be encoded are alone, then dead-lettered |
| the whole command | any other ``PyMongoError``: AutoReconnect / ConnectionFailure / NetworkTimeout, ServerSelectionTimeoutError, NotPrimaryError, OperationFailure (auth, configuration, OutOfDiskSpace ...), ExecutionTimeout, WTimeoutError | transient: the batch retried ("MongoDB disk full" when it says so) |

Decision: an unknown ``writeErrors`` code is deterministic (the server judged that
one document; conditions of the server arrive as command errors or the codes above),
so a new kind of refusal never blocks a partition; an unknown command-level error is
transient (it concerns every record: dead-lettering them all would empty the topic
into the DLQ for what is usually a configuration or an outage).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from common.deadletter import to_dead_letter
from common.kafka_io import make_consumer, make_producer
from common.lifecycle import Backoff, stop_event
from common.log import setup_logging
from common.metrics import serve
from common.mongo_io import connect, ensure_indexes, images_collection
from common.schema import InvalidMessage, parse_image_record, parse_result_message
from common.settings import DbWriterSettings, KafkaSettings, MetricsSettings, MongoSettings, describe, with_flags
from consumers.batching import ReadyMarker, all_delivered, commit, idle_wait, rewind
from consumers.metrics import DbConsumerMetrics

log = logging.getLogger("consumers.db")

TRANSIENT, DISK_FULL, DETERMINISTIC = "transient", "disk full", "deterministic"
# MongoDB error codes (src/mongo/base/error_codes.yml) that say the server cannot take a
# write now, whatever the document: the table in the module docstring.
TRANSIENT_CODES = frozenset({
    10107, 13435, 13436, 189, 91, 11600, 11602, 11601,  # not primary, stepping down, shutting down
    6, 7, 89, 9001, 202, 262, 50,                       # network, time limits
    24, 112, 365,                                       # LockTimeout, WriteConflict, TemporarilyUnavailable
    64, 79, 100,                                        # write concern not satisfied (yet)
    13, 18,                                             # Unauthorized, AuthenticationFailed: configuration
    63, 150, 13388,                                     # sharding: stale routing
})
DISK_FULL_CODES = frozenset({14031})                    # OutOfDiskSpace
DISK_FULL_TEXT = ("no space left on device", "disk is full", "disk full", "out of disk space",
                  "insufficient disk space", "over your space quota", "enospc")
TRANSIENT_TEXT = ("database is locked",)                # nx-27017 (SQLite) answers code 8 for it


def _disk_full(code, message: str) -> bool:
    text = message.lower()
    return code in DISK_FULL_CODES or any(t in text for t in DISK_FULL_TEXT)


def classify_write_error(error) -> str:
    """TRANSIENT, DISK_FULL (transient too) or DETERMINISTIC, for one of a BulkWriteError's
    ``writeErrors`` (the failure of one document's operation)."""
    code, message = error.get("code"), str(error.get("errmsg") or "")
    if _disk_full(code, message):
        return DISK_FULL
    if code in TRANSIENT_CODES or any(t in message.lower() for t in TRANSIENT_TEXT):
        return TRANSIENT
    return DETERMINISTIC


def encoding_errors() -> tuple:
    """What pymongo raises, before sending, for a document BSON cannot hold."""
    from bson.errors import BSONError

    return BSONError, OverflowError, UnicodeError


def classify_exception(exc: BaseException) -> str:
    """DETERMINISTIC for a document that cannot be encoded (one record: found by
    splitting the batch), else (any other PyMongoError: the whole command failed)
    DISK_FULL or TRANSIENT."""
    if isinstance(exc, encoding_errors()):
        return DETERMINISTIC
    return DISK_FULL if _disk_full(getattr(exc, "code", None), str(exc)) else TRANSIENT

GROUP_ID = "iot-db-writer"
IMAGE_FIELDS = ("schema", "device_id", "producer_id", "seq", "sent_at", "label", "dataset", "format")
RESULT_FIELDS = ("device_id", "producer_id", "seq", "sent_at", "prediction", "confidence",
                 "model", "received_at", "inferred_at", "published_at")


def image_fields(msg: dict, image: bytes, now: float) -> tuple[str, dict, dict]:
    """(_id, $set, $min) of an image message's document (either schema: ``image`` is the
    file's bytes, PNG or JPEG as ``format`` says)."""
    from bson import Binary

    fields = {k: msg.get(k) for k in IMAGE_FIELDS}
    fields["image"] = Binary(image)
    return msg["image_id"], fields, {"stored_at": now}


def result_fields(msg: dict, now: float) -> tuple[str, dict, dict]:
    """(_id, $set, $min) of a result message's document."""
    return msg["image_id"], {k: msg.get(k) for k in RESULT_FIELDS}, {"prediction_stored_at": now}


def merged_updates(parts) -> list[tuple[tuple, object]]:
    """``[(records, UpdateOne)]`` from ``[(record, (_id, $set, $min))]``: one upsert per
    image id, so that an image and its result polled together cost MongoDB one write, not
    two (docs/PERFORMANCE.md); later records' fields win, the earliest timestamps stay.
    Every record of an update is committed, retried or dead-lettered with it."""
    from pymongo import UpdateOne

    by_id: dict[str, list] = {}
    for record, (_id, set_, min_) in parts:
        entry = by_id.setdefault(_id, [[], {}, {}])
        entry[0].append(record)
        entry[1].update(set_)
        for k, v in min_.items():
            entry[2][k] = min(v, entry[2].get(k, v))
    return [(tuple(records), UpdateOne({"_id": _id}, {"$set": set_, "$min": min_}, upsert=True))
            for _id, (records, set_, min_) in by_id.items()]


class DbWriter:
    def __init__(self, kafka: KafkaSettings, mongo: MongoSettings, stop, max_records: int = 500,
                 metrics: DbConsumerMetrics | None = None):
        self.kafka, self.stop, self.max_records = kafka, stop, max_records
        self.metrics = metrics or DbConsumerMetrics()
        self.client = connect(mongo)
        self.collection = images_collection(self.client, mongo)
        self.consumer = make_consumer(kafka, kafka.images_topic, kafka.results_topic,
                                      group_id=GROUP_ID, max_poll_records=max_records,
                                      # kafka-python's default, as before: storing is off
                                      # the latency path, and fewer idle fetches save CPU.
                                      fetch_max_wait_ms=max(500, kafka.kafka_fetch_max_wait_ms))
        self.producer = make_producer(kafka)
        self.written = self.skipped = self.dead = 0
        self.writes = 0  # upserts sent: one per image id of a poll (image + result merged)
        self.rejected: set[int] = set()  # id() of this poll's records MongoDB refused
        self.last_log = 0.0

    def ensure_indexes(self) -> None:
        backoff = Backoff(0.5, 10)
        while not self.stop.is_set():
            try:
                ensure_indexes(self.collection)
                return
            except Exception as exc:  # MongoDB not up yet
                log.warning("creating indexes failed (%s); retrying", exc)
                time.sleep(backoff.next())

    def dead_letter(self, record, reason: str):
        """Send ``record`` as it is to the DLQ with ``reason``; returns the send's future."""
        self.dead += 1
        self.metrics.dead_letter()
        log.warning("dead-letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        key, value, headers = to_dead_letter(record, reason, max_bytes=self.kafka.dlq_max_record_bytes)
        return self.producer.send(self.kafka.dlq_topic, key=key, value=value, headers=headers)

    def to_updates(self, records) -> tuple[list, list]:
        """``[(records, UpdateOne)]`` of the valid records (one update per image id), and
        the dead letters' futures."""
        now = time.time()
        parts, futures = [], []
        for record in records:
            try:
                if record.topic == self.kafka.results_topic:
                    parts.append((record, result_fields(parse_result_message(record.value), now)))
                else:
                    msg, image = parse_image_record(record.value, record.headers,
                                                    max_bytes=self.kafka.max_message_bytes)
                    parts.append((record, image_fields(msg, image, now)))
            except InvalidMessage as exc:
                if record.topic == self.kafka.results_topic:
                    futures.append(self.dead_letter(record, exc.reason))
                else:
                    self.skipped += 1
                    self.metrics.skipped_image()
        return merged_updates(parts), futures

    def write(self, updates, futures) -> bool:
        """Write ``updates`` ``[(records, UpdateOne)]`` until each is in MongoDB or, refused for
        what it is, dead-lettered (its future appended to ``futures``).  Transient failures
        are retried with backoff, polling paused (through a MongoDB outage, or a full disk);
        False if stopping first.  Upserts are idempotent, so writing one again is safe."""
        backoff = Backoff(0.5, 10)
        pending = list(updates)
        while not self.stop.is_set():
            pending, failure = self.attempt(pending, futures)
            if not pending:
                return True
            kind, why = failure or (TRANSIENT, "unknown error")
            delay = backoff.next()
            if kind == DISK_FULL:
                log.error("MongoDB disk full (%s): %d of %d updates not written, offsets not "
                          "committed; retrying in %.1f s", why[:300], len(pending), len(updates), delay)
            else:
                log.warning("MongoDB write of %d of %d updates failed (%s); retrying in %.1f s",
                            len(pending), len(updates), why[:300], delay)
            idle_wait(self.consumer, delay, self.stop)
        return False

    def attempt(self, pending, futures) -> tuple[list, tuple[str, str] | None]:
        """One unordered bulk_write of ``pending``: what to retry, and (kind, why) of the
        failure that makes it retried.  Refused documents are dead-lettered."""
        from pymongo.errors import BulkWriteError, PyMongoError

        started = time.perf_counter()
        try:
            try:
                self.collection.bulk_write([op for _, op in pending], ordered=False)
            finally:
                self.metrics.bulk_write(len(pending), time.perf_counter() - started)
            return [], None
        except BulkWriteError as exc:
            retry, dead, failure = set(), set(), None
            for error in exc.details.get("writeErrors") or []:
                index, kind = error["index"], classify_write_error(error)
                self.metrics.write_error(kind)
                why = f"code {error.get('code')}: {error.get('errmsg')}"
                if kind == DETERMINISTIC:
                    dead.add(index)
                    futures.extend(self.reject(pending[index][0], f"MongoDB refused the document ({why})"))
                else:
                    retry.add(index)
                    failure = (kind, why) if failure is None or kind == DISK_FULL else failure
            concern = exc.details.get("writeConcernErrors") or []
            if concern:  # applied, but not as durably as asked: write every one again
                self.metrics.write_error(TRANSIENT, len(concern))
                retry = set(range(len(pending))) - dead
                failure = failure or (TRANSIENT, "write concern not satisfied: " + "; ".join(
                    f"code {e.get('code')}: {e.get('errmsg')}" for e in concern))
            return [pending[i] for i in sorted(retry)], failure
        except encoding_errors() as exc:
            if len(pending) == 1:
                self.metrics.write_error(DETERMINISTIC)
                futures.extend(self.reject(pending[0][0], "the document cannot be encoded for MongoDB "
                                                          f"({type(exc).__name__}: {exc})"))
                return [], None
            # pymongo encodes each sub-batch as it sends it, so this one never reached the
            # server (earlier ones did: written again, harmlessly).  Halve the batch until
            # the record(s) that cannot be encoded are alone; the others are written on the way.
            half = len(pending) // 2
            retry_a, failure_a = self.attempt(pending[:half], futures)
            retry_b, failure_b = self.attempt(pending[half:], futures)
            return retry_a + retry_b, failure_a or failure_b
        except PyMongoError as exc:
            kind = classify_exception(exc)
            self.metrics.write_error(kind)
            return pending, (kind, str(exc))

    def count_written(self, updates) -> None:
        """Count the committed updates by source topic, less those MongoDB refused (dead-lettered)."""
        by_topic: dict[str, int] = {}
        for records, _op in updates:
            for record in records:
                if id(record) not in self.rejected:
                    by_topic[record.topic] = by_topic.get(record.topic, 0) + 1
        for topic, n in by_topic.items():
            self.metrics.documents("result" if topic == self.kafka.results_topic else "image", n)

    def reject(self, records, reason: str) -> list:
        """Records whose document MongoDB will never take: dead-lettered like an invalid
        result; the sends' futures."""
        futures = []
        for record in records:
            self.rejected.add(id(record))
            futures.append(self.dead_letter(record, reason))
        return futures

    def run(self) -> None:
        self.ensure_indexes()
        log.info("consuming %s + %s as group %s", self.kafka.images_topic,
                 self.kafka.results_topic, GROUP_ID)
        ready = ReadyMarker()
        while not self.stop.is_set():
            polled = self.consumer.poll(timeout_ms=500, max_records=self.max_records)
            ready.check(self.consumer)
            self.metrics.update_lag(self.consumer)
            records = [r for batch in polled.values() for r in batch]
            if records:
                self.rejected: set[int] = set()
                updates, futures = self.to_updates(records)
                invalid = len(futures)
                ok = (not updates or self.write(updates, futures))
                if futures:
                    self.producer.flush()
                    ok = ok and all_delivered(futures)
                if ok:
                    commit(self.consumer, records)
                    self.written += sum(len(recs) for recs, _ in updates) - (len(futures) - invalid)
                    self.writes += len(updates)
                    self.count_written(updates)
                else:
                    rewind(self.consumer, records)
            now = time.monotonic()
            if now - self.last_log > 10 and self.written:
                log.info("written %d records in %d upserts, skipped %d invalid images, dead-lettered %d records",
                         self.written, self.writes, self.skipped, self.dead)
                self.last_log = now
        self.producer.close()
        self.consumer.close()
        self.client.close()
        log.info("stopped")


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m consumers.db", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-records", type=int,
                   help="largest bulk_write (default DB_MAX_RECORDS, 500)")
    args = p.parse_args(argv)
    kafka, mongo, metrics = KafkaSettings(), MongoSettings(), MetricsSettings()
    writer = with_flags(DbWriterSettings, p, db_max_records=args.max_records)
    log.info("%s", describe(kafka, mongo, writer, metrics))
    recorder = DbConsumerMetrics(metrics.metrics_enabled)
    serve(metrics, "DB consumer")
    DbWriter(kafka, mongo, stop_event(), writer.db_max_records, recorder).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
