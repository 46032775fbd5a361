"""Replaying dead letters (``python -m consumers.dlq replay``): each original record goes back
to its source topic byte for byte, with a ``replay.of`` header; idempotent through the
store (an image stored with its prediction is skipped; each replay is recorded)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from common.deadletter import replay_headers
from common.kafka_io import make_producer
from common.settings import KafkaSettings
from common.store import PREDICTION, StoreError, StoreReader
from consumers.dlq_entries import Entry, ToolError, iso

log = logging.getLogger("consumers.dlq")


@dataclass
class Outcome:
    entry: Entry
    status: str  # replayed | would replay | skipped | failed
    detail: str = ""
    to: dict | None = None

    def as_dict(self) -> dict:
        d = self.entry.dead
        return {"offset": self.entry.offset, "dlq_partition": self.entry.partition, "status": self.status,
                "detail": self.detail, "source": d.source if d else None,
                "image_id": d.image_id() if d else None, "to": self.to}


class Replayer:
    """Sends dead letters back to their source topics, skipping what the store already holds
    and what was replayed before (the store's replay records)."""

    def __init__(self, kafka: KafkaSettings, store: StoreReader):
        self.kafka, self.store = kafka, store
        try:
            store.ping()
        except StoreError as exc:
            raise ToolError(f"cannot reach the store: {exc}") from None
        self.producer = None

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
        self.store.close()

    def verdict(self, e: Entry, force: bool) -> Outcome | None:
        """Why ``e`` is not sent (an Outcome), or None to send it."""
        d = e.dead
        if d is None:
            return Outcome(e, "skipped", f"not a dead letter: {e.error}")
        if not d.replayable:
            return Outcome(e, "skipped", f"not replayable: {d.why_not_kept}")
        if d.key is None and d.value is None:
            return Outcome(e, "failed", "neither key nor value: kafka-python cannot send such a record")
        image_id = d.image_id()
        if image_id and any(doc.get(PREDICTION) is not None
                            for doc in self.store.by_ids([image_id], [PREDICTION])):
            return Outcome(e, "skipped", f"image {image_id} is already stored with its prediction")
        done = self.store.replay_record(d.ref)
        if done and done.get("fingerprint") == d.fingerprint() and not force:
            return Outcome(e, "skipped", f"already replayed at {iso(done.get('replayed_at', 0))} UTC "
                                         f"(use --force to replay it again)")
        return None

    def run(self, entries: list[Entry], *, dry_run: bool, force: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        sends = []
        for e in entries:
            outcome = self.verdict(e, force)
            if outcome is not None:
                outcomes.append(outcome)
            elif dry_run:
                outcomes.append(Outcome(e, "would replay", f"to {e.dead.source_topic}"))
            else:
                sends.append((e, self.send(e)))
        if sends:
            self.producer.flush()
        for e, future in sends:
            outcomes.append(self.settle(e, future))
        outcomes.sort(key=lambda o: (o.entry.partition, o.entry.offset))
        return outcomes

    def send(self, e: Entry):
        """The send's future, or the exception that refused it at once (too large ...)."""
        d = e.dead
        if self.producer is None:
            self.producer = make_producer(self.kafka)
        try:
            partitions = self.producer.partitions_for(d.source_topic) or set()
            # The original partition while the topic has it (order with the records around it),
            # else wherever the key leads.
            partition = d.source_partition if d.source_partition in partitions else None
            return self.producer.send(d.source_topic, key=d.key, value=d.value, headers=replay_headers(d),
                                      partition=partition)
        except Exception as exc:  # kafka-python raises several kinds here (too large, no metadata ...)
            return exc

    def settle(self, e: Entry, future) -> Outcome:
        d = e.dead
        if isinstance(future, Exception):
            return Outcome(e, "failed", f"{type(future).__name__}: {future}")
        try:
            md = future.get(timeout=60)
        except Exception as exc:
            return Outcome(e, "failed", f"{type(exc).__name__}: {exc}")
        to = {"topic": md.topic, "partition": md.partition, "offset": md.offset}
        previous = self.store.replay_record(d.ref) or {}
        count = previous.get("replays", 0) + 1 if previous.get("fingerprint") == d.fingerprint() else 1
        self.store.record_replay(d.ref, {
            "fingerprint": d.fingerprint(), "reason": d.reason, "source_topic": d.source_topic,
            "source_partition": d.source_partition, "source_offset": d.source_offset,
            "image_id": d.image_id(), "replayed_at": time.time(), "replayed_to": to, "replays": count})
        log.info("replayed %s (%s) to %s[%d]@%d", d.ref, d.source, md.topic, md.partition, md.offset)
        return Outcome(e, "replayed", f"to {md.topic}[{md.partition}]@{md.offset}", to)
