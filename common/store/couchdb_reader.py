"""Reading the CouchDB store back (the writing side, and what a document holds:
common.store.couchdb).

``by_ids`` reads through ``_all_docs`` (keys); ``by_producers``, ``count``, ``latest`` and
``expiring`` through the views of the design document ``_design/iot`` that the sink's
``prepare`` makes: a view is kept up to date incrementally and answers a count with its
reduce (``_stats``), where Mango's ``_find`` has no count and pages with bookmarks.  The
image comes back from its attachment as bytes.  The replay tool's records live in their own
database (COUCHDB_DLQ_REPLAYS_DATABASE).
"""

from __future__ import annotations

import base64
import json
from typing import Iterable, Iterator
from urllib.parse import quote

from common.settings import CouchSettings
from common.store.base import AGE_FIELDS, StoreError
from common.store.couchdb import DESIGN
from common.store.couchdb_http import CouchClient, Unavailable, failure, json_of, where
from common.wire import IMAGE, IMAGE_ID


def age_of(doc: dict) -> float | None:
    """A document's age (the by_age view's key)."""
    value = next((doc[f] for f in AGE_FIELDS if doc.get(f) is not None), None)
    return value if isinstance(value, (int, float)) else None


class CouchReader:
    """Reads ``img_db`` (and the replay tool's database) back.  A database or view not made yet
    (no DB writer has prepared it) reads as empty, as a MongoDB collection that does not exist does."""

    name = "CouchDB"

    def __init__(self, s: CouchSettings):
        self.client, self.settings = CouchClient(s), s
        self.db, self.replays = quote(s.couchdb_database, safe=""), quote(s.couchdb_dlq_replays_database, safe="")
        self.where = where(s, s.couchdb_database)

    def _get(self, method: str, path: str, missing=None, **kwargs):
        """The JSON answer; ``missing`` for a 404; anything else but 200 raises StoreError."""
        try:
            r = self.client.request(method, path, **kwargs)
        except Unavailable as exc:
            raise StoreError(f"CouchDB {self.where}: {exc}") from None
        if r.status_code == 404:
            return missing
        if r.status_code != 200:
            raise StoreError(f"CouchDB {self.where}: {failure(r)}")
        try:
            return r.json()
        except ValueError:
            raise StoreError(f"CouchDB {self.where}: an answer that is not JSON: {r.text[:200]!r}") from None

    @staticmethod
    def _doc(d: dict, fields: Iterable[str]) -> dict:
        out = {IMAGE_ID: d["_id"], **{f: d[f] for f in fields if f in d and not f.startswith("_")}}
        data = ((d.get("_attachments") or {}).get(IMAGE) or {}).get("data")
        if IMAGE in fields and data is not None:
            out[IMAGE] = base64.b64decode(data)
        return out

    def _view(self, view: str, keys: list | None = None, **params) -> list[dict]:
        path = f"{self.db}/{DESIGN}/_view/{view}"
        params = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}
        if keys is None:
            answer = self._get("GET", path, params=params)
        else:
            answer = self._get("POST", path, params=params, json={"keys": keys})
        return (answer or {}).get("rows", [])

    @staticmethod
    def _docs_params(fields: list[str]) -> dict:
        return {"include_docs": "true", **({"attachments": "true"} if IMAGE in fields else {})}

    def ping(self) -> None:
        """The server answers and takes the credentials."""
        self._get("GET", "_session")

    def by_ids(self, image_ids: Iterable[str], fields: Iterable[str]) -> Iterator[dict]:
        ids, fields = list(image_ids), list(fields)
        for start in range(0, len(ids), 1000):
            answer = self._get("POST", f"{self.db}/_all_docs", params=self._docs_params(fields),
                               json={"keys": ids[start:start + 1000]})
            yield from (self._doc(row["doc"], fields) for row in (answer or {}).get("rows", []) if row.get("doc"))

    def by_producers(self, producer_ids: Iterable[str] | None, fields: Iterable[str]) -> Iterator[dict]:
        fields = list(fields)
        keys = None if producer_ids is None else list(producer_ids)
        rows = self._view("by_producer", keys, reduce=False, **self._docs_params(fields))
        yield from (self._doc(row["doc"], fields) for row in rows if row.get("doc"))

    def count(self, *, producer_ids: Iterable[str] | None = None, with_prediction: bool = False) -> int:
        keys = None if producer_ids is None else list(producer_ids)
        rows = self._view("by_producer", keys, **({"group": True} if keys is not None else {}))
        return int(sum(row["value"]["sum" if with_prediction else "count"] for row in rows))

    def latest(self, n: int, fields: Iterable[str]) -> list[dict]:
        fields = list(fields)
        rows = self._view("latest", None, descending=True, limit=n, **self._docs_params(fields))
        return [self._doc(row["doc"], fields) for row in rows if row.get("doc")]

    def expiring(self, before: float, limit: int, fields: Iterable[str]) -> list[dict]:
        fields = [*fields, *AGE_FIELDS]
        rows = self._view("by_age", None, endkey=before, inclusive_end=False, limit=limit,
                          **self._docs_params(fields))
        return [self._doc(row["doc"], fields) for row in rows if row.get("doc")]

    def delete(self, image_ids: Iterable[str], before: float) -> int:
        """One ``_bulk_docs`` of deletions, each on the revision read; a document written
        meanwhile (a conflict) stays, for the next pass."""
        answer = self._get("POST", f"{self.db}/_all_docs", params={"include_docs": "true"},
                           json={"keys": list(image_ids)})
        gone = [{"_id": d["_id"], "_rev": d["_rev"], "_deleted": True}
                for d in (row.get("doc") for row in (answer or {}).get("rows", []))
                if d and (age_of(d) or before) < before]
        if not gone:
            return 0
        try:
            r = self.client.request("POST", f"{self.db}/_bulk_docs", json={"docs": gone})
            if r.status_code not in (201, 202):
                raise failure(r)
            return sum(1 for a in json_of(r) if isinstance(a, dict) and "error" not in a)
        except Unavailable as exc:
            raise StoreError(f"CouchDB {self.where}: {exc}") from None

    def replay_record(self, ref: str) -> dict | None:
        doc = self._get("GET", f"{self.replays}/{quote(ref, safe='')}")
        return {k: v for k, v in doc.items() if not k.startswith("_")} if doc else None

    def record_replay(self, ref: str, record: dict) -> None:
        # Fields merged into an earlier record, as MongoDB's $set does.
        path = f"{self.replays}/{quote(ref, safe='')}"
        try:
            self.client.ensure_database(self.settings.couchdb_dlq_replays_database)
            self.client.put_merged(path, lambda current: {**(current or {}), **record})
        except (Unavailable, ValueError, TypeError) as exc:
            raise StoreError(f"CouchDB {self.where}: {exc}") from None

    def close(self) -> None:
        self.client.close()
