"""The local stack's CouchDB (STORE=couchdb): pouchdb-server, CouchDB's HTTP API over
LevelDB, on disk under the stack's data directory.

    <data>/couchdb/               the databases (LevelDB files), kept across restarts of the stack
    <data>/couchdb/config.json    pouchdb-server's configuration: the pipeline's admin ``iot``
                                  (pouchdb-server hashes its password at its first start) and
                                  where it logs (<logs>/couchdb-server.log)
    <data>/couchdb.password       that admin's password, made with the server's data (0600)

The server listens on 127.0.0.1 only and the pipeline authenticates as ``iot`` (stack.env's
COUCHDB_USER and COUCHDB_PASSWORD).  Once it answers, the stack restricts the pipeline's
databases to admins (their ``_security``), as CouchDB 3 does by default: pouchdb-server
leaves every database open to anonymous requests otherwise.

pouchdb-server is an npm package, installed by ``make pouchdb-server`` (``npm ci
--ignore-scripts`` in pouchdb/, from its package-lock.json, with the Node.js and npm of
scripts/install-system-packages.sh).  No install script is needed: leveldown loads the
prebuilt binary it ships (node-gyp-build), and sqlite3, a backend pouchdb-server can use but
the stack does not, stays unbuilt.  Never ``--in-memory``: the stack's data must outlive a
restart of the server, as MongoDB's and PostgreSQL's do.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path

import requests

from stack.private import made_once, write_private

log = logging.getLogger("stack")

USER = "iot"
ROOT = Path(__file__).resolve().parent.parent
LOCAL_BINARY = ROOT / "pouchdb" / "node_modules" / ".bin" / "pouchdb-server"
INSTALL_HINT = "make pouchdb-server (npm ci in pouchdb/; Node.js and npm: sudo scripts/install-system-packages.sh)"


def pouchdb_server(configured: str | None = None) -> str:
    """The pouchdb-server executable: ``configured``, else the one make pouchdb-server
    installs, else PATH's."""
    if configured:
        return configured
    if LOCAL_BINARY.exists():
        return str(LOCAL_BINARY)
    found = shutil.which("pouchdb-server")
    if found:
        return found
    raise RuntimeError(f"pouchdb-server is not installed ({INSTALL_HINT})")


class LocalCouch:
    """pouchdb-server with its data in ``data``/couchdb, served on 127.0.0.1:``port``."""

    def __init__(self, data: Path, logs: Path, port: int, binary: str | None = None):
        self.data, self.logs, self.port = Path(data), Path(logs), port
        self.dir = self.data / "couchdb"
        self.config = self.dir / "config.json"
        self.password_file = self.data / "couchdb.password"
        self.binary = binary or pouchdb_server()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def password(self) -> str:
        """The admin's password: made with the server's data, read back after."""
        if self.config.exists() and not self.password_file.exists():
            raise RuntimeError(f"{self.config} exists but {self.password_file} does not: remove {self.dir} to "
                               f"start afresh (its data is lost)")
        return made_once(self.password_file, lambda: secrets.token_hex(16) + "\n").strip()

    def argv(self) -> list[str]:
        """The server in the foreground, loopback only, its log in the config's file only."""
        return [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--config", str(self.config), "--no-stdout-logs", "--no-color"]

    def ensure(self) -> None:
        """The data directory and the configuration (the admin the first time; the log file's
        place at every start, as the stack directory may have moved)."""
        password = self.password()
        self.dir.mkdir(parents=True, exist_ok=True)
        config = json.loads(self.config.read_text()) if self.config.exists() else {"admins": {USER: password}}
        config.setdefault("log", {})["file"] = str(self.logs / "couchdb-server.log")
        # The password goes in as it is the first time only: pouchdb-server replaces it with
        # its hash when it starts, and the file must never hold it in clear after that.
        write_private(self.config, json.dumps(config, indent=2))

    def secure(self, *databases: str) -> bool:
        """Create ``databases`` (when missing) readable and writable by admins only; False
        while the server does not answer as it should."""
        members = {"admins": {"names": [], "roles": []}, "members": {"names": [USER], "roles": ["_admin"]}}
        try:
            with requests.Session() as s:
                s.auth = (USER, self.password())
                for name in databases:
                    made = s.put(f"{self.url}/{name}", timeout=5)
                    if made.status_code not in (201, 202, 412):
                        return False
                    if s.put(f"{self.url}/{name}/_security", json=members, timeout=5).status_code != 200:
                        return False
            return True
        except requests.RequestException:
            return False
