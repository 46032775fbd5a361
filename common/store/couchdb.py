"""CouchDB as the store: database ``img_db`` (COUCHDB_DATABASE), one document per image,
``_id`` = image id, through CouchDB's HTTP API (``requests``).

The document holds the fields of ``common.wire`` as top-level members; the image file is
its attachment ``image`` (content type ``image/png`` or ``image/jpeg``, as ``format``
says), kept as binary by CouchDB rather than as base64 inside the JSON: the document stays
small for the views, and ``GET /img_db/<id>/image`` serves the file as it is.  Readers ask
for it with ``attachments=true`` and get it back as bytes.

Writing a batch (the sink):

1. one ``POST _all_docs?include_docs=true`` with the batch's ids reads each document's
   current revision (attachments as stubs);
2. each upsert is merged into its document: its fields set, the first-stored timestamps
   kept at their earliest, the other half's members and the image attachment (unless the
   upsert brings other bytes: md5 digests compared) kept as they are; a document the upsert
   does not change is not written (a redelivery costs one read, no revision);
3. one ``POST _bulk_docs`` sends the changed documents, each on the revision it was merged
   onto.  A document written meanwhile by another writer answers ``conflict`` (409): it is
   read again and merged again, up to CONFLICT_ROUNDS times, never overwritten.

Durability: CouchDB 3 commits every update to disk before it answers (``delayed_commits``
was removed in 3.0, and 2.x defaulted it off), so an answered write survives a crash of
the server before the offsets are committed.  202 (written on fewer nodes of a cluster than
its write quorum) is taken as stored, as MongoDB's ``w: 1`` is: it is on disk where it was
answered, and the cluster copies it.

CouchDB's answers:

| where | answer | outcome |
|---|---|---|
| a document of the ``_bulk_docs`` answer | ``ok`` | stored |
| a document | ``conflict`` (409) | read again, merged again, sent again; transient after CONFLICT_ROUNDS |
| a document | ``forbidden`` (403, a ``validate_doc_update`` refused it) or any other error | refused: that document dead-lettered with CouchDB's error and reason |
| a document | ``unauthorized`` (401, the user may not write the database) | transient (credentials or database security: every document's) |
| the whole request | 400 or 413, or an error that names a document (``bad_request``, ``doc_validation``, ``illegal_docid``, ``document_too_large``, ``attachment_too_large``, ``too_large``) whatever the status, unless its reason says the disk is full: CouchDB refuses the whole request for one invalid id, one ``_``-prefixed member or one document over ``max_document_size`` | the batch is halved until that document is alone: refused with CouchDB's reason, the others stored |
| the whole request | a full disk: pouchdb-server answers 500 ``bad_request`` "IO error: ...: No space left on device" (leveldown's ENOSPC) | transient, kind "disk full" (tests/unit/test_disk_full.py, on a full tmpfs) |
| the whole request | 401, 403, 404 (the database is gone: created again at the next write), 408, 429, any other 4xx, 5xx; no answer (connection refused or reset, timeout) | transient: one :class:`Transient` for the batch ("disk full" when it says so) |
| before sending | an id CouchDB would store as something else than a document (empty, ``_design/``, ``_local/``), a field named as one of CouchDB's own members (``_id``, ``_rev``, ``_deleted``, ``_attachments``, ...), a value JSON or UTF-8 cannot hold (NaN, a lone surrogate) | refused |

Decision: besides what cannot be encoded at all, the sink checks only what CouchDB would
accept and turn into something else (a design document, a deletion); any other judgement of
a document is CouchDB's own.  A whole request refused as a document's fault is halved, not
refused: CouchDB judges a _bulk_docs request by its worst document, and only a request of
one document says which one it is.

``prepare`` makes the design document ``_design/iot`` (DESIGN) whose views the reader
(common.store.couchdb_reader) queries.
"""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import quote

from common.settings import CouchSettings
from common.store.base import DISK_FULL, STORED, Refused, StoreError, Transient, Upsert, WriteOutcome
from common.store.couchdb_http import (CONFLICT_ROUNDS, TRANSIENT, CouchClient, Unavailable, answer_of, encoded,
                                       failure, json_of, where)
from common.wire import CONTENT_TYPES, FORMAT, IMAGE, PREDICTION, PREDICTION_STORED_AT, PRODUCER_ID, STORED_AT

DESIGN = "_design/iot"
# Members CouchDB reads as its own: from an upsert, they would delete or rewrite the document.
OWN_MEMBERS = frozenset({"_id", "_rev", "_deleted", "_attachments", "_conflicts", "_deleted_conflicts",
                         "_local_seq", "_revs_info", "_revisions"})
SPECIAL_IDS = ("_design/", "_local/")
# Errors of a whole _bulk_docs request that are about one of its documents.
DOCUMENT_ERRORS = frozenset({"bad_request", "doc_validation", "illegal_docid", "document_too_large",
                             "attachment_too_large", "too_large"})
_CONFLICT = object()


def _js(name: str) -> str:
    return f"doc[{json.dumps(name)}]"


# Views: by_producer emits 1 for a document with its prediction, 0 without (count and
# with_prediction from one _stats reduce); latest keys complete documents by the time
# their prediction was stored.
VIEWS = {
    "by_producer": {"map": f"function (doc) {{ if ({_js(PRODUCER_ID)} !== undefined) {{ emit({_js(PRODUCER_ID)}, "
                           f"{_js(PREDICTION)} !== undefined ? 1 : 0); }} }}", "reduce": "_stats"},
    "latest": {"map": f"function (doc) {{ if ({_js(PREDICTION)} !== undefined && doc._attachments && "
                      f"doc._attachments[{json.dumps(IMAGE)}]) {{ emit({_js(PREDICTION_STORED_AT)}, null); }} }}"},
    # Retention: a document's age, stored_at else prediction_stored_at (AGE_FIELDS).
    "by_age": {"map": f"function (doc) {{ var age = {_js(STORED_AT)} !== undefined ? {_js(STORED_AT)} : "
                      f"{_js(PREDICTION_STORED_AT)}; if (typeof age === 'number') {{ emit(age, null); }} }}"},
}


def digest(data: bytes) -> str:
    """CouchDB's digest of an attachment's bytes."""
    return "md5-" + base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def refusal_before_sending(u: Upsert) -> str | None:
    """Why CouchDB must not be sent this upsert (None: send it)."""
    if not u.image_id or u.image_id.startswith(SPECIAL_IDS):
        return (f"the image id {u.image_id[:80]!r} would be stored as a CouchDB special document, not an "
                f"image's document")
    own = sorted(OWN_MEMBERS.intersection(u.fields) | OWN_MEMBERS.intersection(u.first))
    if own:
        return f"field {own[0]!r} is one of CouchDB's own document members"
    return None


def merged(current: dict | None, u: Upsert) -> dict | None:
    """The document ``current`` (None: none yet) with ``u`` merged in, or None when ``u``
    changes nothing."""
    doc = dict(current) if current else {"_id": u.image_id}
    changed = current is None
    for name, value in u.fields.items():
        if name == IMAGE:
            stub = (doc.get("_attachments") or {}).get(IMAGE) or {}
            kind = CONTENT_TYPES.get(u.fields.get(FORMAT) or doc.get(FORMAT), "application/octet-stream")
            if stub.get("digest") != digest(value) or stub.get("content_type") != kind:
                doc["_attachments"] = {**(doc.get("_attachments") or {}), IMAGE: {
                    "content_type": kind, "data": base64.b64encode(value).decode()}}
                changed = True
        elif name not in doc or doc[name] != value:
            doc[name] = value
            changed = True
    for name, value in u.first.items():
        if doc.get(name) is None or value < doc[name]:
            doc[name] = value
            changed = True
    return doc if changed else None


class CouchSink:
    """The DB writer's CouchDB sink (see the module docstring for its outcomes)."""

    name = "CouchDB"

    def __init__(self, s: CouchSettings):
        self.client, self.db = CouchClient(s), quote(s.couchdb_database, safe="")
        self.where = where(s, s.couchdb_database)
        self.prepared = False

    @classmethod
    def open(cls, s: CouchSettings) -> "CouchSink":
        return cls(s)  # connects at the first prepare or write: the server may not be up yet

    def prepare(self) -> None:
        """The database and the design document of the views, made or brought up to date."""
        def design(current: dict | None) -> dict | None:
            if current is not None and current.get("views") == VIEWS:
                return None
            return {**({"_rev": current["_rev"]} if current else {}), "_id": DESIGN, "language": "javascript",
                    "views": VIEWS}

        try:
            self.client.ensure_database(self.client.settings.couchdb_database)
            self.client.put_merged(f"{self.db}/{DESIGN}", design)
        except Unavailable as exc:
            raise StoreError(f"CouchDB {self.where}: {exc}") from None
        self.prepared = True

    def write(self, batch: list[Upsert]) -> list[WriteOutcome]:
        outcomes: list[WriteOutcome | None] = [None] * len(batch)
        pending = []
        for i, u in enumerate(batch):
            why = refusal_before_sending(u)
            if why:
                outcomes[i] = Refused(f"CouchDB cannot hold the document ({why})")
            else:
                pending.append(i)
        try:
            if pending and not self.prepared:
                self.prepare()
            for _ in range(CONFLICT_ROUNDS):
                if not pending:
                    break
                pending = self._round(batch, pending, outcomes)
            if pending:
                raise Unavailable(f"conflict: documents written by another writer through {CONFLICT_ROUNDS} "
                                  f"rounds of merging")
        except (Unavailable, StoreError) as exc:
            again = Transient(str(exc), getattr(exc, "kind", TRANSIENT))
            return [o if o is not None else again for o in outcomes]
        return outcomes  # type: ignore[return-value]  # every one decided

    def _round(self, batch: list[Upsert], pending: list[int], outcomes: list) -> list[int]:
        """Read, merge and send ``pending``, deciding their outcomes; returns those to merge
        again (a conflict, or a second upsert of an id already sent in this round)."""
        current = self._current(list({batch[i].image_id: None for i in pending}))
        sending, later = {}, []
        for i in pending:
            if batch[i].image_id in sending:
                later.append(i)
                continue
            doc = merged(current.get(batch[i].image_id), batch[i])
            if doc is None:
                outcomes[i] = STORED
                continue
            try:
                sending[batch[i].image_id] = (i, encoded(doc))
            except (ValueError, TypeError, UnicodeError) as exc:
                outcomes[i] = Refused(f"CouchDB cannot hold the document ({type(exc).__name__}: {exc})")
        answers = self._send(list(sending.items())) if sending else {}
        unauthorized = None
        for i, answer in answers.items():
            if answer is _CONFLICT:
                later.append(i)
                continue
            if isinstance(answer, str):  # unauthorized: the credentials, for every document
                unauthorized = unauthorized or Transient(f"CouchDB: unauthorized: {answer}")
                answer = unauthorized
            outcomes[i] = answer
        return sorted(later)

    def _current(self, ids: list[str]) -> dict[str, dict]:
        """id -> the stored document (its revision, attachments as stubs); absent or deleted: missing."""
        r = self.client.request("POST", f"{self.db}/_all_docs", params={"include_docs": "true"},
                                json={"keys": ids})
        if r.status_code == 404:
            self.prepared = False  # the database is gone: made again at the next write
        if r.status_code != 200:
            raise failure(r)
        return {row["key"]: row["doc"] for row in json_of(r).get("rows", []) if row.get("doc")}

    def _send(self, items: list[tuple[str, tuple[int, bytes]]]) -> dict[int, object]:
        """``_bulk_docs`` of ``(id, (index, encoded document))``: index -> outcome, _CONFLICT,
        or the reason of an ``unauthorized`` answer.  A request refused for a document is
        halved until that document is alone."""
        body = b'{"docs":[' + b",".join(doc for _, (_, doc) in items) + b"]}"
        r = self.client.request("POST", f"{self.db}/_bulk_docs", data=body,
                                headers={"Content-Type": "application/json"})
        if r.status_code in (201, 202):
            # By id, not by position: pouchdb-server lists the refused documents first.
            answers = {a.get("id"): a for a in json_of(r) if isinstance(a, dict)}
            missing = [doc_id for doc_id, _ in items if doc_id not in answers]
            if missing:
                raise Unavailable(f"CouchDB's _bulk_docs answer says nothing of {len(missing)} documents")
            return {i: self._outcome(answers[doc_id]) for doc_id, (i, _) in items}
        error, reason = answer_of(r)
        # pouchdb-server answers a full disk (leveldown's ENOSPC) as 500 bad_request: the
        # server's state, not a document's, whatever the error's name.
        if (r.status_code in (400, 413) or error in DOCUMENT_ERRORS) and failure(r).kind != DISK_FULL:
            if len(items) == 1:
                return {items[0][1][0]: Refused(f"CouchDB refused the document (HTTP {r.status_code} {error}: "
                                                f"{reason})")}
            half = len(items) // 2
            return {**self._send(items[:half]), **self._send(items[half:])}
        if r.status_code == 404:
            self.prepared = False
        raise failure(r)

    @staticmethod
    def _outcome(answer: dict) -> object:
        if "error" not in answer:
            return STORED
        error, reason = answer.get("error"), answer.get("reason")
        if error == "conflict":
            return _CONFLICT
        if error == "unauthorized":
            return str(reason)
        return Refused(f"CouchDB refused the document ({error}: {reason})")

    def close(self) -> None:
        self.client.close()
