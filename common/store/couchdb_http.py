"""CouchDB's HTTP API as the CouchDB store (common.store.couchdb) uses it: one session with
the settings' credentials and timeouts, and what an answer means for the caller."""

from __future__ import annotations

import json
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from common.settings import CouchSettings, secret
from common.store.base import DISK_FULL

TRANSIENT = "transient"
# How often a write that met another writer's revision (409) is read, merged and sent again.
CONFLICT_ROUNDS = 5
DISK_FULL_TEXT = ("enospc", "no space left on device", "disk full", "disk is full")


def encoded(doc: dict) -> bytes:
    """The document as CouchDB's JSON (raises ValueError or UnicodeError for what it cannot hold)."""
    return json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Unavailable(Exception):
    """CouchDB cannot take or answer a request now: a transient failure of the whole call."""

    def __init__(self, reason: str, kind: str = TRANSIENT):
        super().__init__(reason)
        self.kind = kind


def answer_of(r: requests.Response) -> tuple[str, str]:
    """CouchDB's ``error`` and ``reason`` of an answer (empty when it has none)."""
    try:
        body = r.json()
    except ValueError:
        return "", r.text[:200]
    return (str(body.get("error", "")), str(body.get("reason", ""))) if isinstance(body, dict) else ("", "")


def json_of(r: requests.Response):
    """The answer's JSON; a damaged answer is a failure of the call, not of a document."""
    try:
        return r.json()
    except ValueError:
        raise Unavailable(f"HTTP {r.status_code} with a body that is not JSON: {r.text[:200]!r}") from None


def failure(r: requests.Response) -> Unavailable:
    error, reason = answer_of(r)
    text = f"HTTP {r.status_code} {error}: {reason}".strip()
    return Unavailable(text, DISK_FULL if any(t in text.lower() for t in DISK_FULL_TEXT) else TRANSIENT)


def where(s: CouchSettings, database: str) -> str:
    """The server and database, without credentials, for messages."""
    parts = urlsplit(secret(s.couchdb_url))
    return f"{urlunsplit(parts._replace(netloc=parts.netloc.rsplit('@', 1)[-1]))} ({database})"


class CouchClient:
    """An HTTP session on one CouchDB server (credentials from the settings or the URL)."""

    def __init__(self, s: CouchSettings):
        self.settings, self.base = s, secret(s.couchdb_url)
        self.session = requests.Session()
        if s.couchdb_user is not None:
            self.session.auth = (secret(s.couchdb_user), secret(s.couchdb_password) or "")
        self.session.headers.update({"Accept": "application/json"})
        self.timeout = (s.couchdb_connect_timeout_s, s.couchdb_timeout_s)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One request; no answer at all raises :class:`Unavailable`."""
        try:
            return self.session.request(method, f"{self.base}/{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None

    def ensure_database(self, name: str) -> None:
        r = self.request("PUT", quote(name, safe=""))
        if r.status_code not in (201, 202, 412):  # 412: it exists
            raise failure(r)

    def put_merged(self, path: str, merge: Callable[[dict | None], dict | None]) -> None:
        """Writes the document at ``path`` as ``merge`` makes it from the stored one (None: there
        is none; ``merge`` returning None: nothing to write).  A conflict (409: another writer
        wrote in between) reads and merges again, up to CONFLICT_ROUNDS times; the document is
        never overwritten blind."""
        for _ in range(CONFLICT_ROUNDS):
            r = self.request("GET", path)
            if r.status_code not in (200, 404):
                raise failure(r)
            doc = merge(json_of(r) if r.status_code == 200 else None)
            if doc is None:
                return
            r = self.request("PUT", path, data=encoded(doc), headers={"Content-Type": "application/json"})
            if r.status_code in (201, 202):
                return
            if r.status_code != 409:
                raise failure(r)
        raise Unavailable(f"conflict: {path} written by another writer through {CONFLICT_ROUNDS} tries")

    def close(self) -> None:
        self.session.close()
