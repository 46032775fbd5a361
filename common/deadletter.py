"""The dead-letter format of ``iot-dlq`` (docs/ARCHITECTURE.md, "Dead-letter message").

A dead letter is the original Kafka record kept byte for byte, Kafka Connect style:
key = the original key, value = the original value, headers = the original headers
followed by a block of ``dlq.*`` headers that says why and where from.  Nothing is
decoded, truncated or re-encoded, so any record (binary, not UTF-8, any size the broker
took) can be replayed exactly.

Both consumers write dead letters through :func:`to_dead_letter` (the consume loop, for
both); tests and tools read them through :func:`read_dead_letter` (never by parsing
headers by hand).  ``dlq.schema`` is the version of this header block.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from common.wire import (DLQ_PREFIX, DLQ_SCHEMA, H_DLQ_FAILED_AT, H_DLQ_NULL_HEADERS, H_DLQ_OFFSET, H_DLQ_OMITTED,
                         H_DLQ_PARTITION, H_DLQ_REASON, H_DLQ_SCHEMA, H_DLQ_TIMESTAMP, H_DLQ_TOPIC, H_DLQ_VALUE_NULL,
                         H_DLQ_VALUE_SHA256, IMAGE_ID, REPLAY_OF)

SCHEMA, PREFIX = DLQ_SCHEMA, DLQ_PREFIX
MAX_REASON_CHARS = 1024  # keeps the dlq.* block at a few hundred bytes whatever a reason quotes

# The dlq.* block's headers (common.wire), in the order they are written.  dlq.schema
# comes first: the *last* dlq.schema header of a record starts the block, so an original
# header that happens to be called dlq.something stays an original header.
H_SCHEMA, H_REASON, H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP, H_FAILED_AT = (
    H_DLQ_SCHEMA, H_DLQ_REASON, H_DLQ_TOPIC, H_DLQ_PARTITION, H_DLQ_OFFSET, H_DLQ_TIMESTAMP, H_DLQ_FAILED_AT)
# Only when needed: kafka-python cannot send what these stand for.
H_VALUE_NULL, H_NULL_HEADERS = H_DLQ_VALUE_NULL, H_DLQ_NULL_HEADERS
# Only in a dead letter over the size limit: the original key, value and headers were dropped.
H_OMITTED, H_VALUE_SHA256 = H_DLQ_OMITTED, H_DLQ_VALUE_SHA256

Header = tuple[str, "bytes | None"]


class NotADeadLetter(ValueError):
    """A record of the DLQ topic that is neither format (or a damaged one)."""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, read: why, where from, and the original record."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    failed_at: float  # unix seconds
    key: bytes | None
    value: bytes | None
    headers: list[Header] = field(default_factory=list)  # the original headers, in order
    source_timestamp_ms: int | None = None
    schema: int = SCHEMA
    value_size: int | None = None  # the original value's size (None: null value)
    kept: bool = True  # False: the original bytes are not in the DLQ (see ``why_not_kept``)
    why_not_kept: str = ""
    # Where the dead letter itself is (None when read from a bare key/value/headers).
    dlq_topic: str | None = None
    dlq_partition: int | None = None
    dlq_offset: int | None = None

    @property
    def replayable(self) -> bool:
        return self.kept

    @property
    def ref(self) -> str:
        """``<dlq topic>:<partition>:<offset>``: the dead letter's identity (replay.of, the replay state)."""
        return f"{self.dlq_topic}:{self.dlq_partition}:{self.dlq_offset}"

    @property
    def source(self) -> str:
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"

    def image_id(self) -> str | None:
        """The ``image_id`` of the original value when it is a JSON object holding a string one."""
        if not self.value:
            return None
        try:
            obj = json.loads(self.value)
        except (ValueError, RecursionError):
            return None
        image_id = obj.get(IMAGE_ID) if isinstance(obj, dict) else None
        if not isinstance(image_id, str):
            return None
        try:
            image_id.encode("utf-8")  # a lone surrogate can be no MongoDB _id
        except UnicodeEncodeError:
            return None
        return image_id

    def fingerprint(self) -> str:
        """sha256 of what identifies this dead letter's content: tells a dead letter from another one
        that later took the same DLQ offset (a memory-only broker restarted)."""
        h = hashlib.sha256()
        for part in (self.source_topic, str(self.source_partition), str(self.source_offset),
                     repr(self.failed_at), self.reason):
            h.update(part.encode("utf-8", "backslashreplace") + b"\0")
        for data in (self.key, self.value):
            h.update(b"-" if data is None else b"+%d:" % len(data) + data)
        return h.hexdigest()


def _text(value: str) -> bytes:
    return value.encode("utf-8", "backslashreplace")  # a reason may quote a lone surrogate


def record_size(key: bytes | None, value: bytes | None, headers: list[Header]) -> int:
    """Upper bound of the bytes one record takes in a record batch (what kafka-python checks
    against max_request_size and, within it, what the broker checks against message.max.bytes)."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)


def to_dead_letter(record, reason: str, *, max_bytes: int | None = None,
                   now: float | None = None) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` to send to the DLQ topic for the consumed ``record``.

    ``record`` is a kafka-python ConsumerRecord (or anything with its topic, partition,
    offset, timestamp, key, value, headers).  The result is ready for
    ``producer.send(dlq_topic, key=..., value=..., headers=...)``.  When ``max_bytes`` is
    given and the dead letter would be larger (the original was within a few hundred bytes
    of the broker's limit), the original key, value and headers are dropped and only the
    dlq.* block is sent, with the original value's size and sha256: the consumer must go on,
    and a record that large is over every consumer's MAX_MESSAGE_BYTES anyway.
    """
    key, value = record.key, record.value
    original = list(getattr(record, "headers", None) or [])
    timestamp = getattr(record, "timestamp", None)
    block: list[tuple[str, bytes]] = [
        (H_SCHEMA, b"%d" % SCHEMA),
        (H_REASON, _text(reason[:MAX_REASON_CHARS])),
        (H_TOPIC, _text(record.topic)),
        (H_PARTITION, b"%d" % record.partition),
        (H_OFFSET, b"%d" % record.offset),
    ]
    if isinstance(timestamp, int) and timestamp >= 0:
        block.append((H_TIMESTAMP, b"%d" % timestamp))
    block.append((H_FAILED_AT, repr(time.time() if now is None else now).encode()))
    nulls = [i for i, (_k, v) in enumerate(original) if v is None]
    if nulls:
        block.append((H_NULL_HEADERS, ",".join(map(str, nulls)).encode()))
    dead_value = value
    if value is None and key is None:  # kafka-python refuses a record with neither
        dead_value = b""
        block.append((H_VALUE_NULL, b"1"))
    headers = [(k, b"" if v is None else v) for k, v in original] + block
    if max_bytes is not None and record_size(key, dead_value, headers) > max_bytes:
        size = -1 if value is None else len(value)
        block = [h for h in block if h[0] not in (H_NULL_HEADERS, H_VALUE_NULL)]
        block += [(H_OMITTED, b"%d" % size),
                  (H_VALUE_SHA256, hashlib.sha256(value or b"").hexdigest().encode())]
        return None, b"", block
    return key, dead_value, headers


def _int(block: dict, name: str) -> int:
    try:
        return int(block[name])
    except KeyError:
        raise NotADeadLetter(f"header {name} missing") from None
    except ValueError:
        raise NotADeadLetter(f"header {name} is not an integer: {block[name][:40]!r}") from None


def read_dead_letter(record) -> DeadLetter:
    """The dead letter in a record consumed from the DLQ topic (either format).

    Raises :class:`NotADeadLetter` for a record that is neither."""
    headers = list(getattr(record, "headers", None) or [])
    where = {"dlq_topic": getattr(record, "topic", None), "dlq_partition": getattr(record, "partition", None),
             "dlq_offset": getattr(record, "offset", None)}
    start = max((i for i, (k, _v) in enumerate(headers) if k == H_SCHEMA), default=None)
    if start is None:
        raise NotADeadLetter(f"no {H_SCHEMA} header (a dead letter of version 1, JSON, is not read: "
                             "docs/UPGRADING.md)")
    block = {k: v or b"" for k, v in headers[start:]}
    if block[H_SCHEMA] != b"%d" % SCHEMA:
        raise NotADeadLetter(f"unknown dead-letter schema {block[H_SCHEMA][:20]!r} (expected {SCHEMA})")
    try:
        failed_at = float(block[H_FAILED_AT])
    except (KeyError, ValueError):
        raise NotADeadLetter(f"header {H_FAILED_AT} missing or not a number") from None
    original: list[Header] = list(headers[:start])
    common = dict(
        reason=block.get(H_REASON, b"").decode("utf-8", "replace"),
        source_topic=block.get(H_TOPIC, b"").decode("utf-8", "replace"),
        source_partition=_int(block, H_PARTITION), source_offset=_int(block, H_OFFSET),
        failed_at=failed_at,
        source_timestamp_ms=_int(block, H_TIMESTAMP) if H_TIMESTAMP in block else None, **where)
    if H_OMITTED in block:
        size = _int(block, H_OMITTED)
        return DeadLetter(**common, key=None, value=None, headers=[], value_size=None if size < 0 else size,
                          kept=False, why_not_kept="the original record was too large for the DLQ "
                          f"(value sha256 {block.get(H_VALUE_SHA256, b'?').decode('ascii', 'replace')})")
    if H_NULL_HEADERS in block:
        try:
            for i in map(int, block[H_NULL_HEADERS].split(b",")):
                original[i] = (original[i][0], None)
        except (ValueError, IndexError):
            raise NotADeadLetter(f"header {H_NULL_HEADERS} is damaged") from None
    value = None if H_VALUE_NULL in block else record.value
    return DeadLetter(**common, key=record.key, value=value, headers=original,
                      value_size=None if value is None else len(value))


def replay_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """The headers a replay sends: the original ones (a null value becomes empty: kafka-python
    cannot send a null header) without an earlier replay.of, then replay.of = this dead letter."""
    kept = [(k, b"" if v is None else v) for k, v in dead.headers if k != REPLAY_OF]
    return kept + [(REPLAY_OF, dead.ref.encode("utf-8", "backslashreplace"))]
