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
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from common.kafka_io import make_consumer, make_producer
from common.lifecycle import Backoff, stop_event
from common.log import setup_logging
from common.mongo_io import connect, ensure_indexes, images_collection
from common.schema import (InvalidMessage, dumps, make_dead_letter, parse_image_message,
                           parse_result_message)
from common.settings import DbWriterSettings, KafkaSettings, MongoSettings, describe, with_flags
from consumers.batching import ReadyMarker, all_delivered, commit, idle_wait, rewind

log = logging.getLogger("consumers.db")

GROUP_ID = "iot-db-writer"
IMAGE_FIELDS = ("schema", "device_id", "producer_id", "seq", "sent_at", "label", "dataset", "format")
RESULT_FIELDS = ("device_id", "producer_id", "seq", "sent_at", "prediction", "confidence",
                 "model", "received_at", "inferred_at", "published_at")


def image_update(msg: dict, png: bytes, now: float):
    from bson import Binary
    from pymongo import UpdateOne

    fields = {k: msg.get(k) for k in IMAGE_FIELDS}
    fields["image"] = Binary(png)
    return UpdateOne({"_id": msg["image_id"]}, {"$set": fields, "$min": {"stored_at": now}},
                     upsert=True)


def result_update(msg: dict, now: float):
    from pymongo import UpdateOne

    fields = {k: msg.get(k) for k in RESULT_FIELDS}
    return UpdateOne({"_id": msg["image_id"]},
                     {"$set": fields, "$min": {"prediction_stored_at": now}}, upsert=True)


class DbWriter:
    def __init__(self, kafka: KafkaSettings, mongo: MongoSettings, stop, max_records: int = 500):
        self.kafka, self.stop, self.max_records = kafka, stop, max_records
        self.client = connect(mongo)
        self.collection = images_collection(self.client, mongo)
        self.consumer = make_consumer(kafka, kafka.images_topic, kafka.results_topic,
                                      group_id=GROUP_ID, max_poll_records=max_records,
                                      # kafka-python's default, as before: storing is off
                                      # the latency path, and fewer idle fetches save CPU.
                                      fetch_max_wait_ms=max(500, kafka.kafka_fetch_max_wait_ms))
        self.producer = make_producer(kafka)
        self.written = self.skipped = self.dead = 0
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

    def to_updates(self, records) -> tuple[list, list]:
        now = time.time()
        updates, futures = [], []
        for record in records:
            try:
                if record.topic == self.kafka.results_topic:
                    updates.append(result_update(parse_result_message(record.value), now))
                else:
                    msg, png = parse_image_message(record.value,
                                                   max_bytes=self.kafka.max_message_bytes)
                    updates.append(image_update(msg, png, now))
            except InvalidMessage as exc:
                if record.topic == self.kafka.results_topic:
                    self.dead += 1
                    log.warning("dead-letter %s[%d]@%d: %s", record.topic, record.partition,
                                record.offset, exc.reason)
                    futures.append(self.producer.send(self.kafka.dlq_topic, value=dumps(
                        make_dead_letter(source_topic=record.topic, partition=record.partition,
                                         offset=record.offset, reason=exc.reason,
                                         payload=record.value))))
                else:
                    self.skipped += 1
        return updates, futures

    def write(self, updates) -> bool:
        """bulk_write until it succeeds (retrying through a MongoDB outage); False if stopping."""
        from pymongo.errors import PyMongoError

        backoff = Backoff(0.5, 10)
        while not self.stop.is_set():
            try:
                self.collection.bulk_write(updates, ordered=False)
                return True
            except PyMongoError as exc:
                # Upserts are idempotent, so replaying the whole batch is safe.
                delay = backoff.next()
                log.warning("MongoDB write of %d updates failed (%s); retrying in %.1f s",
                            len(updates), str(exc)[:200], delay)
                idle_wait(self.consumer, delay, self.stop)
        return False

    def run(self) -> None:
        self.ensure_indexes()
        log.info("consuming %s + %s as group %s", self.kafka.images_topic,
                 self.kafka.results_topic, GROUP_ID)
        ready = ReadyMarker()
        while not self.stop.is_set():
            polled = self.consumer.poll(timeout_ms=500, max_records=self.max_records)
            ready.check(self.consumer)
            records = [r for batch in polled.values() for r in batch]
            if records:
                updates, futures = self.to_updates(records)
                ok = (not updates or self.write(updates))
                if futures:
                    self.producer.flush()
                    ok = ok and all_delivered(futures)
                if ok:
                    commit(self.consumer, records)
                    self.written += len(updates)
                else:
                    rewind(self.consumer, records)
            now = time.monotonic()
            if now - self.last_log > 10 and self.written:
                log.info("written %d updates, skipped %d invalid images, dead-lettered %d results",
                         self.written, self.skipped, self.dead)
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
    kafka, mongo = KafkaSettings(), MongoSettings()
    writer = with_flags(DbWriterSettings, p, db_max_records=args.max_records)
    log.info("%s", describe(kafka, mongo, writer))
    DbWriter(kafka, mongo, stop_event(), writer.db_max_records).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
