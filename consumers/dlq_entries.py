"""The records of the dead-letter topic, read for the DLQ tool (``python -m consumers.dlq``):
each one's dead letter (``common.deadletter``) or why it is not one, and the selection
the tool's commands take (offsets, a reason, a source topic, a time)."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass

from common.deadletter import DeadLetter, NotADeadLetter, read_dead_letter
from common.kafka_io import client_config
from common.settings import KafkaSettings

log = logging.getLogger("consumers.dlq")


class ToolError(RuntimeError):
    """A failure to report in one line (exit status 1), no traceback."""


@dataclass
class Entry:
    """One record of the DLQ topic: its dead letter, or why it is not one."""

    partition: int
    offset: int
    dead: DeadLetter | None
    error: str = ""

    @property
    def ref(self) -> str:
        return str(self.offset) if self.partition == 0 else f"{self.partition}:{self.offset}"


# ---------------------------------------------------------------- reading the DLQ

def read_dlq(kafka: KafkaSettings, idle_ms: int, at: tuple[int, int] | None = None) -> list[Entry]:
    """Every record of the DLQ topic, from the beginning to the end offsets asked at the start
    (or until ``idle_ms`` without a record: tansu's end offsets are approximate); with ``at``
    (partition, offset), only the record there (an empty list if there is none)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(**client_config(kafka), group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", fetch_max_wait_ms=100)
    except KafkaError as exc:
        raise ToolError(f"cannot reach Kafka at {kafka.kafka_bootstrap_servers}: {exc}") from None
    try:
        partitions = consumer.partitions_for_topic(kafka.dlq_topic)
        if not partitions:
            raise ToolError(f"topic {kafka.dlq_topic} does not exist at {kafka.kafka_bootstrap_servers}")
        if at is not None and at[0] not in partitions:
            return []
        tps = [TopicPartition(kafka.dlq_topic, p) for p in sorted(partitions) if at is None or p == at[0]]
        consumer.assign(tps)
        if at is None:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek(tps[0], at[1])
        end = consumer.end_offsets(tps)
        entries: list[Entry] = []
        last = time.monotonic()
        # One record asked for: read until it (or a later one) arrives, whatever the end
        # offsets say (tansu's are approximate); a busy broker may take seconds to answer.
        while (not entries) if at is not None else any(consumer.position(tp) < end[tp] for tp in tps):
            polled = consumer.poll(timeout_ms=200)
            for batch in polled.values():
                for record in batch:
                    try:
                        entries.append(Entry(record.partition, record.offset, read_dead_letter(record)))
                    except NotADeadLetter as exc:
                        entries.append(Entry(record.partition, record.offset, None, str(exc)))
            if polled:
                last = time.monotonic()
            elif (time.monotonic() - last) * 1000 > idle_ms:
                log.warning("no record for %d ms before the end offsets %s: stopping there",
                            idle_ms, {tp.partition: o for tp, o in end.items()})
                break
    except KafkaError as exc:
        raise ToolError(f"reading {kafka.dlq_topic} failed: {exc}") from None
    finally:
        consumer.close()
    entries.sort(key=lambda e: (e.partition, e.offset))
    return [e for e in entries if (e.partition, e.offset) == at] if at is not None else entries


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds from ``1764230400``, ``2026-11-27T07:00`` (UTC unless it says) or ``6h``."""
    now = time.time() if now is None else now
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if age:
        return now - float(age.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (unix seconds, ISO 8601, or an age such as 30m, 6h, 2d)") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def select(entries: list[Entry], *, reason: str | None = None, source_topic: str | None = None,
           since: float | None = None) -> list[Entry]:
    """The entries that pass every filter given (records that are no dead letter pass none)."""
    if reason is None and source_topic is None and since is None:
        return entries
    return [e for e in entries if e.dead is not None
            and (reason is None or reason.lower() in e.dead.reason.lower())
            and (source_topic is None or e.dead.source_topic == source_topic)
            and (since is None or e.dead.failed_at >= since)]


def parse_ref(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(?:(\d+):)?(\d+)", text.strip())
    if not match:
        raise ValueError(f"not a dead-letter offset: {text!r} (OFFSET or PARTITION:OFFSET)")
    return int(match.group(1) or 0), int(match.group(2))


# ---------------------------------------------------------------- presenting

def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def size_text(dead: DeadLetter) -> str:
    size = "null" if dead.value_size is None else str(dead.value_size)
    return size if dead.kept else f"{size}*"


def one_line(text: str, width: int | None = None) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    return text if width is None or len(text) <= width else text[:width - 1] + "…"
