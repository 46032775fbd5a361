"""``python -m consumers.db``: images and results topics -> the store, one document per image.

A handler of the consume loop (``consumers.loop``): each poll's records become
:class:`common.store.Upsert` records, one per image id (an image and its result polled
together cost the store one write, not two: docs/PERFORMANCE.md), written through the
store's :class:`common.store.Sink` in one call; the loop commits the offsets only once the
write is durable.  Image and result touch disjoint fields and the first-stored timestamps
keep their earliest value, so either order of arrival, and any redelivery, ends in one
complete document.

Per record, the sink's outcome decides: stored (committed), refused for what the document
is (dead-lettered with the store's reason, partition and offset; the rest of the batch is
stored) or transient (the store cannot write now: retried with backoff while the
partitions are polled paused, nothing committed).  The store's own rules are its adapter's
(``common.store.mongodb``, ``common.store.postgres``, ``common.store.couchdb``; STORE picks
one).

Invalid image messages are skipped here: the inference consumer, which reads the same
topic, is the one that dead-letters them (one DLQ record per bad message).  Invalid
result messages are dead-lettered here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from common.kafka_io import make_consumer, make_producer
from common.lifecycle import Backoff, stop_event
from common.log import setup_logging
from common.metrics import serve
from common.schema import InvalidMessage, parse_image_record, parse_result_message
from common.settings import DbWriterSettings, KafkaSettings, MetricsSettings, RetentionSettings, describe, with_flags
from common.store import Refused, Sink, Stored, Transient, Upsert, image_upsert, result_upsert
from common.store.opening import configured, open_configured
from consumers import retention as retention_thread
from consumers.loop import DONE, ConsumeLoop, DeadLetter, Retry
from consumers.metrics import DbConsumerMetrics

log = logging.getLogger("consumers.db")

GROUP_ID = "iot-db-writer"


def merged(parts: list[tuple[object, Upsert]]) -> list[tuple[list, Upsert]]:
    """``[(records, upsert)]`` from ``[(record, upsert)]``: one upsert per image id, later
    records' fields winning, the earliest timestamps kept.  Every record of an upsert is
    committed, retried or dead-lettered with it."""
    by_id: dict[str, tuple[list, Upsert]] = {}
    for record, part in parts:
        if part.image_id in by_id:
            records, upsert = by_id[part.image_id]
            records.append(record)
            upsert.merge(part)
        else:  # parts are made for this batch: the first one of an id takes the others in
            by_id[part.image_id] = ([record], part)
    return list(by_id.values())


class DbWriter:
    """The handler: records -> upserts -> ``sink.write`` -> one outcome per record."""

    log = log

    def __init__(self, kafka: KafkaSettings, sink: Sink, metrics: DbConsumerMetrics | None = None):
        self.kafka, self.sink = kafka, sink
        self.metrics = metrics or DbConsumerMetrics()
        self.written = self.skipped = self.writes = 0
        self.last_log = 0.0

    def parse(self, record, now: float) -> Upsert | DeadLetter | None:
        """The record's part of its document, a dead letter (invalid result), or None (an
        invalid image, which the inference consumer dead-letters)."""
        try:
            if record.topic == self.kafka.results_topic:
                return result_upsert(parse_result_message(record.value), now)
            msg, image = parse_image_record(record.value, record.headers, max_bytes=self.kafka.max_message_bytes)
            return image_upsert(msg, image, now)
        except InvalidMessage as exc:
            if record.topic == self.kafka.results_topic:
                return DeadLetter(exc.reason)
            self.skipped += 1
            self.metrics.skipped_image()
            return None

    def handle(self, records: list, loop=None) -> list:
        now = time.time()
        outcomes: dict[int, object] = {}
        parts = []
        for i, record in enumerate(records):
            part = self.parse(record, now)
            if isinstance(part, Upsert):
                parts.append((i, part))
            else:
                outcomes[i] = part or DONE
        groups = merged(parts)
        if groups:
            started = time.perf_counter()
            try:
                results = self.sink.write([upsert for _, upsert in groups])
            finally:
                self.metrics.bulk_write(len(groups), time.perf_counter() - started)
            self.count(groups, results, records)
            for (indexes, _), result in zip(groups, results, strict=True):
                outcome = self.outcome(result)
                outcomes.update((i, outcome) for i in indexes)
        return [outcomes[i] for i in range(len(records))]

    def outcome(self, result):
        if isinstance(result, Stored):
            return DONE
        if isinstance(result, Refused):
            return DeadLetter(result.reason, "store_refused")
        return Retry(result.kind, result.reason, error=result.kind == "disk full")

    def count(self, groups, results, records) -> None:
        """Count write errors (a whole-write failure once) and the documents stored, by topic."""
        for failure in {id(r): r for r in results if not isinstance(r, Stored)}.values():
            self.metrics.write_error(failure.kind if isinstance(failure, Transient) else "deterministic")
        stored = [i for (indexes, _), result in zip(groups, results) if isinstance(result, Stored) for i in indexes]
        self.writes += sum(1 for result in results if isinstance(result, Stored))
        self.written += len(stored)
        n_results = sum(1 for i in stored if records[i].topic == self.kafka.results_topic)
        self.metrics.documents("result", n_results)
        self.metrics.documents("image", len(stored) - n_results)

    def retrying(self, retry: Retry, records: int, total: int, delay: float) -> None:
        if retry.error:  # a full disk: intake stops here (nothing committed) until there is room
            log.error("%s %s at %s (%s): %d of %d records not written, offsets not committed, intake stopped "
                      "until the store has room; retrying in %.1f s", self.sink.name, retry.cause,
                      getattr(self.sink, "where", "?"), retry.detail[:300], records, total, delay)
        else:
            log.warning("%s write of %d of %d records failed (%s); retrying in %.1f s",
                        self.sink.name, records, total, retry.detail[:300], delay)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_log > 10 and self.written:
            log.info("written %d records in %d upserts, skipped %d invalid images", self.written, self.writes,
                     self.skipped)
            self.last_log = now

    def prepare(self, stop) -> None:
        """The sink's indexes/tables, retried while the store is not up yet."""
        backoff = Backoff(0.5, 10)
        while not stop.is_set():
            try:
                self.sink.prepare()
                return
            except Exception as exc:  # the store is not up yet
                log.warning("preparing %s failed (%s); retrying", self.sink.name, exc)
                time.sleep(backoff.next())


def make_loop(kafka: KafkaSettings, sink: Sink, stop, max_records: int = 500,
              metrics: DbConsumerMetrics | None = None) -> tuple[DbWriter, ConsumeLoop]:
    writer = DbWriter(kafka, sink, metrics)
    consumer = make_consumer(kafka, kafka.images_topic, kafka.results_topic, group_id=GROUP_ID,
                             max_poll_records=max_records,
                             # kafka-python's default: storing is off the latency path, and
                             # fewer idle fetches save CPU.
                             fetch_max_wait_ms=max(500, kafka.kafka_fetch_max_wait_ms))
    loop = ConsumeLoop(writer, consumer=consumer, producer=make_producer(kafka), kafka=kafka, stop=stop,
                       metrics=writer.metrics, max_records=max_records)
    return writer, loop


def run(kafka: KafkaSettings, sink: Sink, stop, max_records: int, metrics: DbConsumerMetrics,
        retention: RetentionSettings | None = None, open_store_reader=None) -> None:
    """The DB consumer until ``stop``; with ``retention`` (STORE_RETENTION_DAYS > 0) its
    retention thread too, on a reader ``open_store_reader()`` opens (consumers.retention)."""
    writer, loop = make_loop(kafka, sink, stop, max_records, metrics)
    writer.prepare(stop)
    if retention is not None and retention.store_retention_days > 0:
        log.info("retention: images older than %g days deleted every %.0f s%s", retention.store_retention_days,
                 retention.store_retention_interval_s,
                 f", archived first to {retention.store_archive_dir}" if retention.store_archive_dir else "")
        retention_thread.start(retention, open_store_reader, stop)
    log.info("consuming %s + %s as group %s into %s", kafka.images_topic, kafka.results_topic, GROUP_ID,
             sink.name)
    try:
        loop.run()
    finally:
        sink.close()
        log.info("stopped: written %d records, dead-lettered %d", writer.written, loop.dead)


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m consumers.db", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-records", type=int, help="largest write (default DB_MAX_RECORDS, 500)")
    args = p.parse_args(argv)
    kafka, metrics = (with_flags(cls, p) for cls in (KafkaSettings, MetricsSettings))
    store, backend = configured(p)  # STORE and the chosen store's settings
    writer = with_flags(DbWriterSettings, p, db_max_records=args.max_records)
    retention = with_flags(RetentionSettings, p)
    log.info("%s", describe(kafka, store, backend, writer, retention, metrics))
    recorder = DbConsumerMetrics(metrics.metrics_enabled)
    serve(metrics, "DB consumer")
    sink = open_configured(store, backend, sink=True)
    run(kafka, sink, stop_event(), writer.db_max_records, recorder, retention,
        lambda: open_configured(store, backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
