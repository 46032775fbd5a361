"""What the pipeline asks of a store: the Sink the DB writer writes through, and the
reader that everything else reads stored images back with.

A store holds one document (row) per image, keyed by the image id.  Its fields
(``common.wire``) come from two messages that arrive in either order and any number of
times: the image (``DOCUMENT_IMAGE_FIELDS`` and the image file itself) and its result
(``DOCUMENT_RESULT_FIELDS``).  The
writer hands the sink :class:`Upsert` records; the two halves touch disjoint fields,
and ``first`` timestamps (``stored_at``, ``prediction_stored_at``) keep their earliest
value, so any order and any redelivery end in the same complete document.

Adapters (``common.store.mongodb``, ``common.store.postgres``, ``common.store.couchdb``)
are the only modules that import a database client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from common.wire import (DOCUMENT_IMAGE_FIELDS, DOCUMENT_RESULT_FIELDS, IMAGE, IMAGE_ID, PREDICTION_STORED_AT,
                         STORED_AT)

@dataclass
class Upsert:
    """One image's document, or the part of it one or more records bring: ``fields`` are
    set (later records win), ``first`` timestamps keep their earliest value."""

    image_id: str
    fields: dict = field(default_factory=dict)
    first: dict = field(default_factory=dict)

    def merge(self, other: "Upsert") -> None:
        self.fields.update(other.fields)
        for k, v in other.first.items():
            self.first[k] = min(v, self.first.get(k, v))


def image_upsert(msg: dict, image: bytes, now: float) -> Upsert:
    """The image half of a document, from a parsed image message and its file's bytes."""
    fields = {k: msg.get(k) for k in DOCUMENT_IMAGE_FIELDS}
    fields[IMAGE] = image
    return Upsert(msg[IMAGE_ID], fields, {STORED_AT: now})


def result_upsert(result, now: float) -> Upsert:
    """The result half of a document, from a parsed result message (common.models.ResultMessage,
    whose attributes are the wire's field names)."""
    return Upsert(result.image_id, {k: getattr(result, k) for k in DOCUMENT_RESULT_FIELDS},
                  {PREDICTION_STORED_AT: now})


# ---------------------------------------------------------------- write outcomes

@dataclass(frozen=True)
class Stored:
    """The write is durable: the record may be committed."""


@dataclass(frozen=True)
class Refused:
    """The store will never take this document (it would fail the same way forever): the
    record goes to the dead-letter topic with ``reason``; the rest of the batch goes on."""

    reason: str


@dataclass(frozen=True)
class Transient:
    """The store cannot take the write now (down, restarting, full): retried with backoff,
    nothing committed.  ``kind`` is ``transient`` or ``disk full`` (logged as an error)."""

    reason: str
    kind: str = "transient"


# A document's age for retention: the first of these it has.
AGE_FIELDS = (STORED_AT, PREDICTION_STORED_AT)
# Every field a stored document may have: what an archive keeps of it.
DOCUMENT_FIELDS = tuple(dict.fromkeys((*DOCUMENT_IMAGE_FIELDS, IMAGE, *DOCUMENT_RESULT_FIELDS, *AGE_FIELDS)))

STORED = Stored()
WriteOutcome = Stored | Refused | Transient
DISK_FULL = "disk full"


class Sink(Protocol):
    """Where the DB writer puts documents.  ``write`` returns one outcome per upsert, in
    order; a failure of the whole write returns the same :class:`Transient` object for
    every upsert (the writer counts it once)."""

    name: str
    where: str  # the store's location for messages, without credentials

    def prepare(self) -> None:
        """Create what the documents need (indexes, tables); raises while the store is down."""

    def write(self, batch: list[Upsert]) -> list[WriteOutcome]: ...

    def close(self) -> None: ...


class StoreReader(Protocol):
    """Reading stored images back: the end-of-run check, the analysis, the dashboard and
    the dead-letter replay tool.  Documents are dicts with ``IMAGE_ID`` and the fields
    asked for; a field the document lacks is absent.  Errors are :class:`StoreError`."""

    name: str
    where: str  # the store's location for messages, without credentials

    def ping(self) -> None: ...

    def by_ids(self, image_ids: Iterable[str], fields: Iterable[str]) -> Iterator[dict]: ...

    def by_producers(self, producer_ids: Iterable[str] | None, fields: Iterable[str]) -> Iterator[dict]: ...

    def count(self, *, producer_ids: Iterable[str] | None = None, with_prediction: bool = False) -> int: ...

    def latest(self, n: int, fields: Iterable[str]) -> list[dict]:
        """The ``n`` most recently stored images that have a prediction and an image."""

    def expiring(self, before: float, limit: int, fields: Iterable[str]) -> list[dict]:
        """Up to ``limit`` documents older than ``before`` (epoch seconds), oldest first: a
        document's age is its ``stored_at``, else (a result whose image never came) its
        ``prediction_stored_at`` (:data:`AGE_FIELDS`).  Retention (``consumers.retention``)."""

    def delete(self, image_ids: Iterable[str], before: float) -> int:
        """Delete those of ``image_ids`` still older than ``before``; returns how many were deleted."""

    def replay_record(self, ref: str) -> dict | None:
        """The dead-letter replay tool's record of a replayed dead letter (None: never replayed)."""

    def record_replay(self, ref: str, record: dict) -> None: ...

    def close(self) -> None: ...


class StoreError(RuntimeError):
    """The store could not be read (down, refused the credentials, a bad query)."""
