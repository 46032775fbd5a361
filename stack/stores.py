"""The local stack's store server, the one STORE names: MongoDB (nx-27017, the MongoDB
wire protocol on SQLite, ``data/mongo.db``), PostgreSQL (:mod:`stack.postgres`, a
cluster in ``data/postgres``) or CouchDB (:mod:`stack.couchdb`, pouchdb-server on LevelDB
in ``data/couchdb``).  Each keeps its data across restarts of the stack and is
health-checked through the store's own reader (``ping``).

An external server is used, and none started, when its settings name one: ``MONGO_URI``
for MongoDB, ``POSTGRES_DSN`` or ``POSTGRES_HOST`` for PostgreSQL, ``COUCHDB_URL`` for
CouchDB.  stack.env then says ``STORE=`` and the store's endpoint (``MONGO_URI=``,
``POSTGRES_DSN=``, or ``COUCHDB_URL=`` with ``COUCHDB_USER=`` and ``COUCHDB_PASSWORD=``).
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from common.settings import (CouchSettings, MongoSettings, PostgresSettings, StackSettings, StoreSettings, given, mask,
                             secret)
from common.store import open_reader
from common.store.opening import couch_settings_of
from stack.component import Component
from stack.couchdb import USER as COUCH_USER, LocalCouch
from stack.ports import pick_port
from stack.postgres import LocalPostgres, bin_dir

log = logging.getLogger("stack")

# Endpoints the stack writes to stack.env; set in the environment they mean "use this
# external server" (stack.control keeps a stack of its own from inheriting them).
ENDPOINT_KEYS = ("MONGO_URI", "POSTGRES_DSN", "POSTGRES_HOST", "COUCHDB_URL", "COUCHDB_USER", "COUCHDB_PASSWORD")


# The stack's component (process, pid file, CPU accounting) that serves each store.
COMPONENTS = {"mongodb": "mongo", "postgres": "postgres", "couchdb": "couchdb"}


def store_component(store: str | None) -> str:
    """The component serving ``store`` (a STORE value; empty: mongodb)."""
    from common.store.opening import chosen

    return COMPONENTS[chosen(store or "mongodb")]


def plan_store(directory: Path, endpoints: dict[str, str]) -> list[Component]:
    """The store's component (none for an external server); its endpoints into ``endpoints``."""
    store = StoreSettings().store
    endpoints["STORE"] = store
    if store == "postgres":
        return plan_postgres(directory, endpoints)
    if store == "couchdb":
        return plan_couchdb(directory, endpoints)
    return plan_mongo(directory, endpoints)


def plan_mongo(directory: Path, endpoints: dict[str, str]) -> list[Component]:
    external = given(MongoSettings(), "mongo_uri")
    if external:
        endpoints["MONGO_URI"] = external.get_secret_value()
        log.info("using external MongoDB at %s", mask(external))
        return []
    port = pick_port(COMPONENTS["mongodb"])
    uri = endpoints["MONGO_URI"] = f"mongodb://127.0.0.1:{port}"
    return [Component(
        COMPONENTS["mongodb"], [str(Path(sys.executable).parent / "nx-27017"), "--host", "127.0.0.1", "-p", str(port),
                  "--db", str(directory / "data" / "mongo.db"),
                  "--log-file", str(directory / "logs" / "mongo-server.log"),
                  "--pid-file", str(directory / "data" / "nx-27017.pid")],
        ready=lambda: ready(store="mongodb", mongo=MongoSettings(mongo_uri=uri, mongo_timeout_ms=1000)))]


def external_endpoints() -> dict[str, str] | None:
    """STORE and the endpoint of the external server the settings name (``MONGO_URI``;
    ``POSTGRES_DSN`` or ``POSTGRES_HOST``; ``COUCHDB_URL`` with its user and password), as
    stack.env writes them, or None when they name none: how a process pointed at a deployed
    pipeline (the experiment on the producer VM) finds its store (``reader_of``)."""
    store = StoreSettings().store
    if store == "postgres":
        dsn = external_postgres(PostgresSettings())
        return {"STORE": store, "POSTGRES_DSN": dsn} if dsn else None
    if store == "couchdb":
        settings = CouchSettings()
        if not given(settings, "couchdb_url"):
            return None
        return {"STORE": store, **{field.upper(): secret(getattr(settings, field))
                                   for field in ("couchdb_url", "couchdb_user", "couchdb_password")
                                   if given(settings, field)}}
    uri = given(MongoSettings(), "mongo_uri")
    return {"STORE": store, "MONGO_URI": uri.get_secret_value()} if uri else None


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
    cluster = LocalPostgres(directory / "data", pick_port(COMPONENTS["postgres"]), stack.stack_postgres_user,
                            bin_dir(stack.stack_postgres_bin_dir))
    dsn = endpoints["POSTGRES_DSN"] = cluster.dsn
    return [Component(
        COMPONENTS["postgres"], cluster.argv(), before_start=cluster.ensure, stop_signal=signal.SIGINT,
        ready=lambda: ready(store="postgres", postgres=PostgresSettings(postgres_dsn=dsn,
                                                                        postgres_connect_timeout_s=2)))]


def plan_couchdb(directory: Path, endpoints: dict[str, str]) -> list[Component]:
    settings = CouchSettings()
    external = given(settings, "couchdb_url")
    if external:
        endpoints["COUCHDB_URL"] = secret(external)
        for field in ("couchdb_user", "couchdb_password"):
            if given(settings, field):
                endpoints[field.upper()] = secret(getattr(settings, field))
        log.info("using external CouchDB at %s", mask(external))
        return []
    server = LocalCouch(directory / "data", directory / "logs", pick_port(COMPONENTS["couchdb"]),
                        StackSettings().stack_pouchdb_server or None)
    endpoints.update(COUCHDB_URL=server.url, COUCHDB_USER=COUCH_USER, COUCHDB_PASSWORD=server.password())
    mine = couch_settings_of(endpoints, couchdb_connect_timeout_s=1, couchdb_timeout_s=5)
    databases = (settings.couchdb_database, settings.couchdb_dlq_replays_database)
    return [Component(COMPONENTS["couchdb"], server.argv(), before_start=server.ensure,
                      ready=lambda: ready(store="couchdb", couchdb=mine) and server.secure(*databases))]


def ready(**settings) -> bool:
    """The store answers its reader's ping."""
    try:
        with closing(open_reader(**settings)) as store:
            store.ping()
        return True
    except Exception:
        return False
