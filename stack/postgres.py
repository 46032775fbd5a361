"""The local stack's PostgreSQL (STORE=postgres): a cluster of its own under the stack's
data directory, run with the server programs of Debian's ``postgresql`` package.

    <data>/postgres/            the cluster (initdb), kept across restarts of the stack
    <data>/postgres.password    the pipeline user's password, made with the cluster (0600)

The server listens on 127.0.0.1 only (no Unix socket) with password authentication
(scram-sha-256); the pipeline connects as ``iot`` to the database ``iot``, which it owns.
The cluster's superuser (``postgres``) may only log in through a Unix socket (peer), and
there is none: nothing in the pipeline needs one.

PostgreSQL refuses to run as root.  When the stack runs as root (CI, containers) every
PostgreSQL program runs as ``STACK_POSTGRES_USER`` (``postgres``, the system user Debian's
package creates) through ``setpriv``, which executes the program in place (no process in
between: the pid file is the server's own and its signals reach it); the cluster's
directory belongs to that user, who must be able to reach it: every directory above it
must be searchable by that user (a checkout under /work or /home is; a directory under
a root-only one, such as pytest's /tmp/pytest-of-root, is not, and the stack says so).
Run by any other user, the programs run as that user.

Decision: the server runs in the foreground (``postgres -D``), not through ``pg_ctl
start``: the supervisor watches it, restarts it and stops it like every other component.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from stack.private import made_once

log = logging.getLogger("stack")

ROLE = DATABASE = "iot"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "Debian package postgresql: sudo scripts/install-system-packages.sh"


def bin_dir(configured: str | None = None) -> Path:
    """Where initdb and postgres are: ``configured``, else the newest Debian version's
    directory, else PATH's."""
    if configured:
        return Path(configured)
    versions = sorted((p for p in DEBIAN_ROOT.glob("*/bin") if (p / "postgres").is_file()),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0])
    if versions:
        return versions[-1]
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise RuntimeError(f"PostgreSQL's server programs are not installed ({INSTALL_HINT})")


class LocalPostgres:
    """A cluster in ``data``/postgres served on 127.0.0.1:``port``."""

    def __init__(self, data: Path, port: int, user: str = "postgres", programs: Path | None = None):
        self.data, self.port = Path(data), port
        self.cluster = self.data / "postgres"
        self.password_file = self.data / "postgres.password"
        self.programs = programs or bin_dir()
        self.user = user if os.geteuid() == 0 else None

    # ------------------------------------------------------------ what the stack publishes
    def password(self) -> str:
        """The pipeline user's password: made with the cluster, read back after."""
        if self.initialized() and not self.password_file.exists():
            raise RuntimeError(f"{self.cluster} exists but {self.password_file} does not: remove the cluster "
                               f"to start afresh (its data is lost)")
        return made_once(self.password_file, lambda: secrets.token_hex(16) + "\n").strip()

    @property
    def dsn(self) -> str:
        return f"postgresql://{ROLE}:{self.password()}@127.0.0.1:{self.port}/{DATABASE}"

    def argv(self) -> list[str]:
        """The server in the foreground: loopback TCP only, no Unix socket."""
        return self.as_user([str(self.programs / "postgres"), "-D", str(self.cluster), "-h", "127.0.0.1",
                             "-p", str(self.port), "-k", ""])

    # ------------------------------------------------------------ running as the user
    def as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        try:
            gid = pwd.getpwnam(self.user).pw_gid
        except KeyError:
            raise RuntimeError(f"the stack runs as root and PostgreSQL must not: there is no user {self.user!r} "
                               f"(STACK_POSTGRES_USER) to run it as ({INSTALL_HINT} creates postgres)") from None
        return ["setpriv", f"--reuid={self.user}", f"--regid={gid}", "--init-groups", "--", *argv]

    def _run(self, argv: list[str], what: str, stdin: str | None = None) -> None:
        proc = subprocess.run(self.as_user(argv), input=stdin, capture_output=True, text=True, cwd="/")
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")

    # ------------------------------------------------------------ the cluster
    def initialized(self) -> bool:
        return (self.cluster / "PG_VERSION").is_file()

    def ensure(self) -> None:
        """Create the cluster, its user and its database the first time; nothing after."""
        if self.initialized():
            return
        password = self.password()
        self.cluster.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.cluster, self.user, pwd.getpwnam(self.user).pw_gid)
            if subprocess.run(self.as_user(["test", "-w", str(self.cluster)]), cwd="/").returncode != 0:
                shutil.rmtree(self.cluster, ignore_errors=True)
                raise RuntimeError(f"PostgreSQL runs as {self.user} (STACK_POSTGRES_USER), which cannot reach "
                                   f"{self.cluster}: every directory above it must be searchable by that user "
                                   f"(set STACK_DIR elsewhere, or chmod o+x the one that is not)")
        log.info("creating the PostgreSQL cluster in %s%s", self.cluster, f" (as {self.user})" if self.user else "")
        try:
            self._run([str(self.programs / "initdb"), "-D", str(self.cluster), "-U", "postgres", "-E", "UTF8",
                       "--no-locale", "--auth-local=peer", "--auth-host=scram-sha-256", "--no-instructions"],
                      "initdb")
            # Single-user mode: no server, no socket, no password needed yet.  The password
            # goes through stdin, never an argument (ps would show it).
            self._run([str(self.programs / "postgres"), "--single", "-D", str(self.cluster), "-F", "-c",
                       "exit_on_error=true", "postgres"], "creating the pipeline's user and database",
                      stdin=f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\n"
                            f"CREATE DATABASE {DATABASE} OWNER {ROLE};\n")
        except RuntimeError as exc:
            shutil.rmtree(self.cluster, ignore_errors=True)  # half a cluster would never start
            raise RuntimeError(f"PostgreSQL cluster in {self.cluster}: {exc}") from None
