"""MongoDB as the store: ``iot.images``, one document per image, ``_id`` = image id.

The sink writes a batch as one unordered ``bulk_write`` of ``UpdateOne(upsert=True)``
(``$set`` the fields, ``$min`` the first-stored timestamps) with write concern
``w: MONGO_WRITE_CONCERN_W``, ``j: MONGO_WRITE_JOURNAL``, so an acknowledged write
survives a mongod crash before the offsets are committed.

Its errors, per document where MongoDB says which one (each of a ``BulkWriteError``'s
``writeErrors`` names the index of its operation):

| where the error is | error (class, or code name / code) | outcome |
|---|---|---|
| ``writeErrors[i]`` | NotWritablePrimary 10107, NotPrimaryNoSecondaryOk 13435, NotPrimaryOrSecondary 13436, PrimarySteppedDown 189, ShutdownInProgress 91, InterruptedAtShutdown 11600, InterruptedDueToReplStateChange 11602, Interrupted 11601, HostUnreachable 6, HostNotFound 7, NetworkTimeout 89, SocketException 9001, NetworkInterfaceExceededTimeLimit 202, ExceededTimeLimit 262, MaxTimeMSExpired 50, LockTimeout 24, WriteConflict 112, TemporarilyUnavailable 365, WriteConcernFailed 64, UnknownReplWriteConcern 79, UnsatisfiableWriteConcern 100, Unauthorized 13, AuthenticationFailed 18, StaleShardVersion 63, StaleEpoch 150, StaleConfig 13388; "database is locked" (nx-27017/SQLite) | transient: that document retried |
| ``writeErrors[i]`` | disk full: OutOfDiskSpace 14031, or a message saying so ("No space left on device", "disk is full", "Insufficient disk space", "over your space quota") | transient, kind "disk full" |
| ``writeErrors[i]`` | any other code: DocumentValidationFailure 121, DuplicateKey 11000 (``_id`` upserts cannot collide, so another unique index refused it), document too large 17419 / BSONObjectTooLarge 10334, DollarPrefixedFieldName 52, EmptyFieldName 56, DottedFieldName 57, BadValue 2, TypeMismatch 14, ImmutableField 66, ... | refused: that document dead-lettered |
| ``writeConcernErrors`` | any (the writes were applied but not made as durable as asked) | transient: every document not refused retried |
| raised before the write (client side) | ``bson.errors.BSONError`` (InvalidDocument, DocumentTooLarge, InvalidStringData), ``OverflowError`` (integer over 8 bytes), ``UnicodeError`` (lone surrogate) | refused: the batch is split until the document(s) that cannot be encoded are alone |
| the whole command | any other ``PyMongoError``: AutoReconnect / ConnectionFailure / NetworkTimeout, ServerSelectionTimeoutError, NotPrimaryError, OperationFailure (auth, configuration, OutOfDiskSpace ...), ExecutionTimeout, WTimeoutError | transient: the batch retried ("disk full" when it says so) |

Decision: an unknown ``writeErrors`` code is a refusal (the server judged that one
document; conditions of the server arrive as command errors or the codes above), so a
new kind of refusal never blocks a partition; an unknown command-level error is
transient (it concerns every document: dead-lettering them all would empty the topic
into the DLQ for what is usually a configuration or an outage).
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from bson import Binary
from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError
from pymongo.write_concern import WriteConcern

from common.settings import MongoSettings, secret
from common.store.base import AGE_FIELDS, DISK_FULL, STORED, Refused, StoreError, Transient, Upsert, WriteOutcome
from common.wire import (DEVICE_ID, IMAGE, IMAGE_ID, PREDICTION, PREDICTION_STORED_AT, PRODUCER_ID, SENT_AT,
                         SEQ, STORED_AT)

TRANSIENT = "transient"
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
# What pymongo raises, before sending, for a document BSON cannot hold.
ENCODING_ERRORS = (BSONError, OverflowError, UnicodeError)


def _disk_full(code, message: str) -> bool:
    text = message.lower()
    return code in DISK_FULL_CODES or any(t in text for t in DISK_FULL_TEXT)


def classify_write_error(error: dict) -> str:
    """``transient``, ``disk full`` or ``refused`` for one of a BulkWriteError's ``writeErrors``."""
    code, message = error.get("code"), str(error.get("errmsg") or "")
    if _disk_full(code, message):
        return DISK_FULL
    if code in TRANSIENT_CODES or any(t in message.lower() for t in TRANSIENT_TEXT):
        return TRANSIENT
    return "refused"


def connect(s: MongoSettings) -> MongoClient:
    return MongoClient(secret(s.mongo_uri), serverSelectionTimeoutMS=s.mongo_timeout_ms,
                       connectTimeoutMS=s.mongo_timeout_ms,
                       socketTimeoutMS=s.mongo_socket_timeout_ms, retryWrites=False)


def write_concern(s: MongoSettings) -> WriteConcern:
    """MONGO_WRITE_CONCERN_W / MONGO_WRITE_JOURNAL: how durable an acknowledged write is."""
    return WriteConcern(w=s.mongo_write_concern_w, j=s.mongo_write_journal)


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, for messages."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", uri)


def update_of(u: Upsert) -> UpdateOne:
    fields = u.fields if IMAGE not in u.fields else {**u.fields, IMAGE: Binary(u.fields[IMAGE])}
    return UpdateOne({"_id": u.image_id}, {"$set": fields, "$min": u.first}, upsert=True)


class MongoSink:
    """The DB writer's MongoDB sink (see the module docstring for its outcomes)."""

    name = "MongoDB"

    def __init__(self, collection, client=None, where: str = "MongoDB"):
        self.collection, self.client, self.where = collection, client, where

    @classmethod
    def open(cls, s: MongoSettings) -> "MongoSink":
        client = connect(s)
        return cls(client[s.mongo_database][s.mongo_collection].with_options(write_concern=write_concern(s)), client,
                   f"{redact_uri(secret(s.mongo_uri))} ({s.mongo_database}.{s.mongo_collection})")

    def prepare(self) -> None:
        """``_id`` is the image id (unique by construction); these indexes serve the reports."""
        self.collection.create_index([(PRODUCER_ID, ASCENDING), (SEQ, ASCENDING)])
        self.collection.create_index([(DEVICE_ID, ASCENDING), (SENT_AT, ASCENDING)])
        self.collection.create_index([(PREDICTION, ASCENDING)])
        self.collection.create_index([(STORED_AT, ASCENDING)])  # retention (MongoReader.expiring)

    def write(self, batch: list[Upsert]) -> list[WriteOutcome]:
        return self._write(batch, [update_of(u) for u in batch])

    def _write(self, batch: list[Upsert], ops: list) -> list[WriteOutcome]:
        try:
            self.collection.bulk_write(ops, ordered=False)
            return [STORED] * len(ops)
        except BulkWriteError as exc:
            outcomes: list[WriteOutcome] = [STORED] * len(ops)
            for error in exc.details.get("writeErrors") or []:
                kind, why = classify_write_error(error), f"code {error.get('code')}: {error.get('errmsg')}"
                outcomes[error["index"]] = (Refused(f"MongoDB refused the document ({why})") if kind == "refused"
                                            else Transient(why, kind))
            concern = exc.details.get("writeConcernErrors") or []
            if concern:  # applied, but not as durably as asked: write every one again
                again = Transient("write concern not satisfied: " + "; ".join(
                    f"code {e.get('code')}: {e.get('errmsg')}" for e in concern))
                outcomes = [o if isinstance(o, Refused) else again for o in outcomes]
            return outcomes
        except ENCODING_ERRORS as exc:
            if len(ops) == 1:
                return [Refused(f"the document cannot be encoded for MongoDB ({type(exc).__name__}: {exc})")]
            # pymongo encodes each sub-batch as it sends it, so this one never reached the
            # server (earlier ones did: written again, harmlessly).  Halve the batch until
            # the document(s) that cannot be encoded are alone; the others are written on the way.
            half = len(ops) // 2
            return self._write(batch[:half], ops[:half]) + self._write(batch[half:], ops[half:])
        except PyMongoError as exc:
            failure = Transient(str(exc), DISK_FULL if _disk_full(getattr(exc, "code", None), str(exc))
                                else TRANSIENT)
            return [failure] * len(ops)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class MongoReader:
    """Reads ``iot.images`` (and the replay tool's ``iot.dlq_replays``) back."""

    name = "MongoDB"

    def __init__(self, s: MongoSettings):
        self.settings, self.client = s, connect(s)
        self.where = f"{redact_uri(secret(s.mongo_uri))} ({s.mongo_database}.{s.mongo_collection})"
        db = self.client[s.mongo_database]
        self.images, self.replays = db[s.mongo_collection], db[s.mongo_dlq_replays_collection]

    def _run(self, fn):
        try:
            return fn()
        except PyMongoError as exc:
            raise StoreError(f"MongoDB {self.where}: {exc}") from None

    @staticmethod
    def _doc(d: dict) -> dict:
        d[IMAGE_ID] = d.pop("_id")
        if isinstance(d.get(IMAGE), Binary):
            d[IMAGE] = bytes(d[IMAGE])
        return d

    def ping(self) -> None:
        self._run(lambda: self.client.admin.command("ping"))

    def by_ids(self, image_ids: Iterable[str], fields: Iterable[str]) -> Iterator[dict]:
        ids, projection = list(image_ids), {f: 1 for f in fields}
        for start in range(0, len(ids), 1000):
            query = {"_id": {"$in": ids[start:start + 1000]}}
            yield from map(self._doc, self._run(lambda q=query: list(self.images.find(q, projection))))

    def by_producers(self, producer_ids: Iterable[str] | None, fields: Iterable[str]) -> Iterator[dict]:
        query = {} if producer_ids is None else {PRODUCER_ID: {"$in": list(producer_ids)}}
        yield from map(self._doc, self._run(lambda: list(self.images.find(query, {f: 1 for f in fields}))))

    def count(self, *, producer_ids: Iterable[str] | None = None, with_prediction: bool = False) -> int:
        query: dict = {} if producer_ids is None else {PRODUCER_ID: {"$in": list(producer_ids)}}
        if with_prediction:
            query[PREDICTION] = {"$exists": True}
        return self._run(lambda: self.images.count_documents(query))

    def latest(self, n: int, fields: Iterable[str]) -> list[dict]:
        query = {PREDICTION: {"$exists": True}, IMAGE: {"$exists": True}}
        return [self._doc(d) for d in self._run(lambda: list(
            self.images.find(query, {f: 1 for f in fields}).sort(PREDICTION_STORED_AT, DESCENDING).limit(n)))]

    @staticmethod
    def _older(before: float) -> dict:
        # stored_at, else prediction_stored_at (AGE_FIELDS).  Not a TTL index: stored_at is
        # epoch seconds (the wire contract's), and MongoDB expires only BSON dates.
        first, second = AGE_FIELDS
        return {"$or": [{first: {"$lt": before}}, {first: {"$exists": False}, second: {"$lt": before}}]}

    def expiring(self, before: float, limit: int, fields: Iterable[str]) -> list[dict]:
        projection = {f: 1 for f in (*fields, *AGE_FIELDS)}
        return [self._doc(d) for d in self._run(lambda: list(
            self.images.find(self._older(before), projection).sort(STORED_AT, ASCENDING).limit(limit)))]

    def delete(self, image_ids: Iterable[str], before: float) -> int:
        query = {"$and": [{"_id": {"$in": list(image_ids)}}, self._older(before)]}
        return self._run(lambda: self.images.delete_many(query).deleted_count)

    def replay_record(self, ref: str) -> dict | None:
        return self._run(lambda: self.replays.find_one({"_id": ref}))

    def record_replay(self, ref: str, record: dict) -> None:
        # update_one + $set, not replace_one: nx-27017 (the local stack's MongoDB) drops the
        # filter's _id from an upserted replacement.
        self._run(lambda: self.replays.update_one({"_id": ref}, {"$set": record}, upsert=True))

    def close(self) -> None:
        self.client.close()
