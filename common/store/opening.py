"""Opening the configured store: ``STORE`` (``common.settings.StoreSettings``) picks the
adapter, whose settings come from the caller or the environment.

Adapters are imported here only when chosen, so a process that never opens PostgreSQL
never imports psycopg (and one on MongoDB never needs psycopg installed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from common.store.base import Sink, StoreReader

if TYPE_CHECKING:
    from common.settings import CouchSettings


def chosen(store: str | None) -> str:
    """``store``, or STORE from the environment (validated)."""
    from common.settings import StoreSettings

    return (StoreSettings() if store is None else StoreSettings(store=store)).store


def open_sink(mongo=None, *, postgres=None, couchdb=None, store: str | None = None) -> Sink:
    """The DB writer's sink of the store STORE names (or ``store``): MongoDB with ``mongo``
    (default MONGO_*), PostgreSQL with ``postgres`` (default POSTGRES_*), CouchDB with
    ``couchdb`` (default COUCHDB_*)."""
    name = chosen(store)
    if name == "postgres":
        from common.settings import PostgresSettings
        from common.store.postgres import PostgresSink

        return PostgresSink.open(postgres or PostgresSettings())
    if name == "couchdb":
        from common.settings import CouchSettings
        from common.store.couchdb import CouchSink

        return CouchSink.open(couchdb or CouchSettings())
    from common.settings import MongoSettings
    from common.store.mongodb import MongoSink

    return MongoSink.open(mongo or MongoSettings())


def open_reader(mongo=None, *, postgres=None, couchdb=None, store: str | None = None) -> StoreReader:
    """A reader of the store STORE names (or ``store``), with the settings given or read
    from the environment, as :func:`open_sink`."""
    name = chosen(store)
    if name == "postgres":
        from common.settings import PostgresSettings
        from common.store.postgres import PostgresReader

        return PostgresReader(postgres or PostgresSettings())
    if name == "couchdb":
        from common.settings import CouchSettings
        from common.store.couchdb_reader import CouchReader

        return CouchReader(couchdb or CouchSettings())
    from common.settings import MongoSettings
    from common.store.mongodb import MongoReader

    return MongoReader(mongo or MongoSettings())


def configured(parser=None, **flags):
    """``(StoreSettings, the chosen store's settings)`` from the environment, for a process
    configured for the pipeline (the DB writer, the DLQ tool, the dashboard): STORE picks
    MongoSettings, PostgresSettings or CouchSettings, with ``flags`` (CLI values, None when
    not given) on top of that store's; an invalid value ends the program through ``parser``
    (``common.settings.with_flags``).  Log both with ``describe`` to name the store used."""
    from common.settings import CouchSettings, MongoSettings, PostgresSettings, StoreSettings, with_flags

    store = with_flags(StoreSettings, parser)
    backend_class = {"postgres": PostgresSettings, "couchdb": CouchSettings}.get(store.store, MongoSettings)
    fields = backend_class.model_fields
    return store, with_flags(backend_class, parser, **{k: v for k, v in flags.items() if k in fields})


def open_configured(store, backend, *, sink: bool = False):
    """The reader (or with ``sink``, the DB writer's sink) of :func:`configured`'s result."""
    keyword = {"postgres": "postgres", "couchdb": "couchdb"}.get(store.store, "mongo")
    return (open_sink if sink else open_reader)(store=store.store, **{keyword: backend})


def couch_settings_of(env: Mapping[str, str], **values) -> CouchSettings:
    """CouchDB's settings from a stack's endpoints (COUCHDB_URL, COUCHDB_USER, COUCHDB_PASSWORD)."""
    from common.settings import CouchSettings

    return CouchSettings(**{"couchdb_url": env["COUCHDB_URL"], "couchdb_user": env.get("COUCHDB_USER") or None,
                            "couchdb_password": env.get("COUCHDB_PASSWORD") or None, **values})


def reader_of(env: Mapping[str, str]) -> StoreReader:
    """A reader of the store a local stack's endpoints name (its stack.env: ``STORE=`` and
    ``MONGO_URI=``, ``POSTGRES_DSN=`` or ``COUCHDB_URL=`` with its user and password), for the
    processes that run the pipeline against a stack (the demo, the experiments) rather than
    being configured for it."""
    from common.settings import MongoSettings, PostgresSettings

    store = chosen(env.get("STORE") or "mongodb")
    if store == "postgres":
        return open_reader(store=store, postgres=PostgresSettings(postgres_dsn=env["POSTGRES_DSN"]))
    if store == "couchdb":
        return open_reader(store=store, couchdb=couch_settings_of(env))
    return open_reader(store=store, mongo=MongoSettings(mongo_uri=env["MONGO_URI"]))
