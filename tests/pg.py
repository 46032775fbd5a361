"""A real PostgreSQL server for the tests, made the way the local stack makes its own
(stack/postgres.py: initdb, the pipeline's user and database, loopback TCP, password
authentication), and a plain psycopg connection to check what it holds: the tests read
PostgreSQL themselves, never through the store reader they are checking (common.store).

Run as root, PostgreSQL runs as the ``postgres`` user, who must be able to reach its
directory; pytest's temporary directories are root-only, so the server lives in a
directory of its own under the system's temporary directory (searchable, not listable).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from stack.ports import free_port
from tests.binaries import required_binary, unavailable
from tests.support import HANG_GUARD_S


def reachable_dir(prefix: str) -> Path:
    """A new directory the postgres user can reach (mode 0711: searchable, not listable)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o711)
    return d


def programs() -> Path:
    """PostgreSQL's server programs, or skip (fail under CI=true: the project installs them)."""
    __tracebackhide__ = True
    from stack.postgres import bin_dir

    if os.geteuid() == 0:
        required_binary("setpriv", "util-linux")
    try:
        found = bin_dir()
    except RuntimeError as exc:
        unavailable(str(exc))
    if not (found / "initdb").is_file():
        unavailable(f"initdb is not in {found} (Debian package postgresql: sudo scripts/install-system-packages.sh)")
    return found


class PostgresServer:
    """One cluster in ``directory``, started and stopped at will on the same port (its data kept)."""

    def __init__(self, directory: Path, *extra: str):
        from stack.postgres import LocalPostgres

        self.cluster = LocalPostgres(directory / "data", free_port(), programs=programs())
        self.cluster.ensure()
        self.extra, self.proc = list(extra), None
        self.log = directory / "postgres.log"

    @property
    def dsn(self) -> str:
        return self.cluster.dsn

    def settings(self, **values):
        from common.settings import PostgresSettings

        return PostgresSettings(postgres_dsn=self.dsn, **values)

    def start(self) -> "PostgresServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cluster.argv() + self.extra, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + HANG_GUARD_S
        while not self.accepts():
            assert self.proc.poll() is None, f"postgres exited with {self.proc.returncode}: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"postgres did not start: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)
        return self

    def accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT: fast shutdown (clients disconnected); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=HANG_GUARD_S)
        self.proc = None


def connect(dsn: str):
    """A plain autocommit psycopg connection."""
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def rows(dsn: str, where: str = "TRUE", params=()) -> dict[str, dict]:
    """image_id -> the row of iot_image_data (every column), read with SQL."""
    from psycopg.rows import dict_row

    with connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT * FROM iot_image_data WHERE {where}", params)
        return {r["image_id"]: r for r in cur.fetchall()}


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
