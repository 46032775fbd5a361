"""A real CouchDB HTTP server for the tests: pouchdb-server made the way the local stack
makes its own (stack/couchdb.py: on disk, an admin with a password, the pipeline's
databases restricted to admins), and plain HTTP (requests) to check what it holds: the
tests read CouchDB themselves, never through the store reader they are checking
(common.store)."""

from __future__ import annotations

import base64
import signal
import subprocess
import time
from pathlib import Path

import requests

from stack.ports import free_port
from tests.binaries import required_binary, unavailable
from tests.support import HANG_GUARD_S

DATABASES = ("img_db", "img_db_dlq_replays")


def binary() -> str:
    """pouchdb-server, or skip (fail under CI=true: make pouchdb-server installs it)."""
    __tracebackhide__ = True
    from stack.couchdb import pouchdb_server

    required_binary("node", "nodejs")
    try:
        return pouchdb_server()
    except RuntimeError as exc:
        unavailable(str(exc))


class CouchServer:
    """One pouchdb-server with its data in ``directory``, started and stopped at will on the
    same port (its data kept)."""

    def __init__(self, directory: Path):
        from stack.couchdb import LocalCouch

        (directory / "logs").mkdir(parents=True, exist_ok=True)
        self.server = LocalCouch(directory / "data", directory / "logs", free_port(), binary())
        self.server.ensure()
        self.proc = None
        self.log = directory / "logs" / "pouchdb-server.out"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth(self) -> tuple[str, str]:
        from stack.couchdb import USER

        return USER, self.server.password()

    def env(self) -> dict[str, str]:
        """The endpoints, as a stack's stack.env has them."""
        user, password = self.auth
        return {"COUCHDB_URL": self.url, "COUCHDB_USER": user, "COUCHDB_PASSWORD": password}

    def settings(self, **values):
        from common.store.opening import couch_settings_of

        return couch_settings_of(self.env(), **values)

    def start(self) -> "CouchServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.server.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + HANG_GUARD_S
        while not self.server.secure(*DATABASES):
            assert self.proc.poll() is None, f"pouchdb-server exited with {self.proc.returncode}: {self.log_tail()}"
            assert time.monotonic() < deadline, f"pouchdb-server did not start: {self.log_tail()}"
            time.sleep(0.1)
        return self

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: stopped; SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=HANG_GUARD_S)
        self.proc = None

    def session(self) -> requests.Session:
        s = requests.Session()
        s.auth = self.auth
        return s


def documents(url: str, auth, database: str = "img_db", ids=None) -> dict[str, dict]:
    """image id -> the stored document (design documents left out), read over HTTP, the
    image attachment's bytes under ``"image"``."""
    params = {"include_docs": "true", "attachments": "true"}
    with requests.Session() as s:
        s.auth = auth
        if ids is None:
            r = s.get(f"{url}/{database}/_all_docs", params=params, timeout=60)
        else:
            r = s.post(f"{url}/{database}/_all_docs", params=params, json={"keys": list(ids)}, timeout=60)
    if r.status_code == 404:
        return {}
    r.raise_for_status()
    out = {}
    for row in r.json()["rows"]:
        doc = row.get("doc")
        if doc and not doc["_id"].startswith("_design/"):
            image = (doc.get("_attachments") or {}).get("image")
            if image and "data" in image:
                doc["image"] = base64.b64decode(image["data"])
            out[doc["_id"]] = doc
    return out


def reset(server: CouchServer) -> None:
    """The pipeline's databases emptied (deleted and made again, admins only)."""
    with server.session() as s:
        for name in DATABASES:
            s.delete(f"{server.url}/{name}", timeout=30)
    assert server.server.secure(*DATABASES)
