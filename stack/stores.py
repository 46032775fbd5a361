"""The local stack's store server, the one STORE names: MongoDB (nx-27017, the MongoDB
wire protocol on SQLite, ``data/mongo.db``) or PostgreSQL (:mod:`stack.postgres`, a
cluster in ``data/postgres``).  Both keep their data across restarts of the stack and
are health-checked through the store's own reader (``ping``).

An external server is used, and none started, when its settings name one: ``MONGO_URI``
for MongoDB, ``POSTGRES_DSN`` or ``POSTGRES_HOST`` for PostgreSQL.  stack.env then says
``STORE=`` and the store's endpoint (``MONGO_URI=`` or ``POSTGRES_DSN=``).
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from common.settings import MongoSettings, PostgresSettings, StackSettings, StoreSettings, given, mask, secret
from common.store import open_reader
from stack.component import Component
from stack.ports import pick_port
from stack.postgres import LocalPostgres, bin_dir

log = logging.getLogger("stack")

# Endpoints the stack writes to stack.env; set in the environment they mean "use this
# external server" (stack.control keeps a stack of its own from inheriting them).
ENDPOINT_KEYS = ("MONGO_URI", "POSTGRES_DSN", "POSTGRES_HOST")


def plan_store(directory: Path, endpoints: dict[str, str]) -> list[Component]:
    """The store's component (none for an external server); its endpoints into ``endpoints``."""
    store = StoreSettings().store
    endpoints["STORE"] = store
    if store == "postgres":
        return plan_postgres(directory, endpoints)
    return plan_mongo(directory, endpoints)


def plan_mongo(directory: Path, endpoints: dict[str, str]) -> list[Component]:
    external = given(MongoSettings(), "mongo_uri")
    if external:
        endpoints["MONGO_URI"] = external.get_secret_value()
        log.info("using external MongoDB at %s", mask(external))
        return []
    port = pick_port("mongo")
    uri = endpoints["MONGO_URI"] = f"mongodb://127.0.0.1:{port}"
    return [Component(
        "mongo", [str(Path(sys.executable).parent / "nx-27017"), "--host", "127.0.0.1", "-p", str(port),
                  "--db", str(directory / "data" / "mongo.db"),
                  "--log-file", str(directory / "logs" / "mongo-server.log"),
                  "--pid-file", str(directory / "data" / "nx-27017.pid")],
        ready=lambda: ready(store="mongodb", mongo=MongoSettings(mongo_uri=uri, mongo_timeout_ms=1000)))]


def external_postgres(s: PostgresSettings) -> str | None:
    """The DSN of an external server named by POSTGRES_DSN or POSTGRES_HOST (None: neither is set)."""
    if given(s, "postgres_dsn"):
        return secret(s.postgres_dsn)
    if not given(s, "postgres_host"):
        return None
    password = secret(s.postgres_password)
    host = f"[{s.postgres_host}]" if ":" in s.postgres_host else s.postgres_host
    credentials = quote(s.postgres_user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{credentials}@{host}:{s.postgres_port}/{quote(s.postgres_db, safe='')}"


def plan_postgres(directory: Path, endpoints: dict[str, str]) -> list[Component]:
    external = external_postgres(PostgresSettings())
    if external:
        endpoints["POSTGRES_DSN"] = external
        log.info("using external PostgreSQL at %s", mask(PostgresSettings(postgres_dsn=external).postgres_dsn))
        return []
    stack = StackSettings()
    cluster = LocalPostgres(directory / "data", pick_port("postgres"), stack.stack_postgres_user,
                            bin_dir(stack.stack_postgres_bin_dir))
    dsn = endpoints["POSTGRES_DSN"] = cluster.dsn
    return [Component(
        "postgres", cluster.argv(), before_start=cluster.ensure, stop_signal=signal.SIGINT,
        ready=lambda: ready(store="postgres", postgres=PostgresSettings(postgres_dsn=dsn,
                                                                        postgres_connect_timeout_s=2)))]


def ready(**settings) -> bool:
    """The store answers its reader's ping."""
    try:
        with closing(open_reader(**settings)) as store:
            store.ping()
        return True
    except Exception:
        return False
