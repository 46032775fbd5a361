"""PostgreSQL as the store: table ``iot_image_data``, one row per image, ``image_id`` its
primary key, a typed column per field (docs/ARCHITECTURE.md has the table).

``prepare`` creates the tables and indexes idempotently, under an advisory lock (two DB
writers starting together do not race), and records the schema version in
``iot_schema_version``; a table written by a newer release is refused, not altered.

The sink writes a batch as one transaction: per upsert ``INSERT ... ON CONFLICT
(image_id) DO UPDATE`` setting only the columns the upsert carries (the image half and
the result half touch disjoint columns) and ``stored_at`` / ``prediction_stored_at`` to
``LEAST(existing, new)`` (PostgreSQL's LEAST ignores NULL, so a first value is taken as
it is).  Sessions run with ``synchronous_commit=on``: a COMMIT that returned is on disk,
so the offsets committed after it never name a lost write.  The batch is sent at once
(``executemany``, pipelined); when a row is refused the transaction is rolled back and
the batch written again row by row, each row in a SAVEPOINT, so a refused row never
aborts the others.

Errors, by SQLSTATE (the class is its first two characters):

| error | SQLSTATE | outcome |
|---|---|---|
| data exception: a NUL byte in text (found by psycopg before sending: ``DataError``), invalid UTF-8 (22021), a number out of range (22003), ... | class 22 | refused: that row dead-lettered |
| integrity constraint violation: unique (23505, another unique index), not null, check, ... | class 23 | refused |
| program limit exceeded: a row or an index entry too large | class 54 | refused |
| a value psycopg cannot send: a lone surrogate (``UnicodeEncodeError``), a type it cannot adapt (``ProgrammingError`` without SQLSTATE) | none | refused |
| disk full | 53100 | transient, kind "disk full" (also when the message says so) |
| connection exception (the server is down, the connection lost) | class 08, or ``OperationalError`` / ``InterfaceError`` without SQLSTATE | transient: the batch retried on a new connection |
| admin_shutdown 57P01, crash_shutdown 57P02, cannot_connect_now 57P03 (starting, recovering), query_canceled 57014 (statement_timeout) | class 57 | transient |
| serialization_failure 40001, deadlock_detected 40P01, lock_not_available 55P03 | | transient |
| out of memory 53200, too many connections 53300, I/O error 58030, internal error XX000, a read-only server 25006 | | transient |
| permission denied 42501, undefined table or column 42P01 / 42703, any other SQLSTATE | | transient (configuration; logged by the writer at every retry) |

A transient error fails the whole batch: the transaction is rolled back and every item
gets the same :class:`Transient`.  Decision: only classes 22, 23 and 54 (what the row
holds) refuse a row; any other state concerns every row (the server, the schema, the
credentials), and dead-lettering them all would empty the topic into the DLQ for what is
usually an outage or a configuration.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Iterable, Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from common.settings import PostgresSettings, secret
from common.store.base import AGE_FIELDS, DISK_FULL, STORED, Refused, StoreError, Transient, Upsert, WriteOutcome
from common.wire import (CONFIDENCE, DEVICE_ID, DOCUMENT_IMAGE_FIELDS, DOCUMENT_RESULT_FIELDS, IMAGE, IMAGE_ID,
                         PREDICTION, PREDICTION_STORED_AT, PRODUCER_ID, SCHEMA, SENT_AT, SEQ, STORED_AT, TIMESTAMPS)

TABLE = "iot_image_data"
VERSIONS = "iot_schema_version"
REPLAYS = "iot_dlq_replays"
SCHEMA_VERSION = 1
TRANSIENT = "transient"
REFUSED = "refused"
REFUSED_CLASSES = ("22", "23", "54")  # data exception, integrity constraint, program limit exceeded
DISK_FULL_STATE = "53100"
DISK_FULL_TEXT = ("no space left on device", "disk full", "could not extend file")
# Any number: serialises prepare() between DB writers (pg_advisory_xact_lock).
PREPARE_LOCK = 0x10745C4E

# Column types; every field of the stored document has its column (a field added to the
# contract without one fails here, at import, not at the first write).
_TEXT, _DOUBLE = "TEXT", "DOUBLE PRECISION"
_TYPES = {SCHEMA: "INTEGER", SEQ: "BIGINT", IMAGE: "BYTEA", CONFIDENCE: _DOUBLE,
          **dict.fromkeys(TIMESTAMPS, _DOUBLE)}
_FIELDS = tuple(dict.fromkeys((*DOCUMENT_IMAGE_FIELDS, IMAGE, *DOCUMENT_RESULT_FIELDS, STORED_AT, PREDICTION_STORED_AT)))
COLUMNS = {name: _TYPES.get(name, _TEXT) for name in _FIELDS}
INDEXES = {"iot_image_data_producer_seq": (PRODUCER_ID, SEQ),
           "iot_image_data_device_sent": (DEVICE_ID, SENT_AT),
           "iot_image_data_prediction": (PREDICTION,),
           "iot_image_data_stored_at": (STORED_AT,)}  # retention (PostgresReader.expiring)


def _ident(*names: str) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def schema_statements() -> list[sql.Composable]:
    """The DDL of every table and index, each idempotent."""
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in COLUMNS.items())
    out: list[sql.Composable] = [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        .format(sql.Identifier(VERSIONS)),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (image_id TEXT PRIMARY KEY, {})").format(sql.Identifier(TABLE), columns),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (ref TEXT PRIMARY KEY, record JSONB NOT NULL)")
        .format(sql.Identifier(REPLAYS))]
    out += [sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(sql.Identifier(name), sql.Identifier(TABLE),
                                                                      _ident(*cols))
            for name, cols in INDEXES.items()]
    return out


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create what is missing and record the schema version (one transaction)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PREPARE_LOCK,))
        for statement in schema_statements():
            conn.execute(statement)
        found = conn.execute(sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(VERSIONS))).fetchone()[0]
        if found is None:
            conn.execute(sql.SQL("INSERT INTO {} (version, applied_at) VALUES (%s, %s)").format(
                sql.Identifier(VERSIONS)), (SCHEMA_VERSION, time.time()))
        elif found > SCHEMA_VERSION:
            raise StoreError(f"{TABLE} has schema version {found}, newer than this release's {SCHEMA_VERSION}: "
                             f"upgrade this release")


@lru_cache(maxsize=64)
def upsert_statement(fields: tuple[str, ...], first: tuple[str, ...]) -> sql.Composed:
    """The INSERT ... ON CONFLICT of an upsert carrying ``fields`` (set) and ``first``
    (earliest kept); parameters: the image id, then the values in that order."""
    unknown = [f for f in (*fields, *first) if f not in COLUMNS]
    if unknown:
        raise ValueError(f"no column of {TABLE} for {unknown}")
    table, names = sql.Identifier(TABLE), (IMAGE_ID, *fields, *first)
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(f)) for f in fields]
    sets += [sql.SQL("{0} = LEAST({1}.{0}, EXCLUDED.{0})").format(sql.Identifier(f), table) for f in first]
    action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (image_id) {}").format(
        table, _ident(*names), sql.SQL(", ").join(sql.Placeholder() * len(names)), action)


def statement_of(u: Upsert) -> tuple[sql.Composed, list]:
    fields, first = tuple(u.fields), tuple(u.first)
    return upsert_statement(fields, first), [u.image_id, *(u.fields[f] for f in fields),
                                             *(u.first[f] for f in first)]


def classify(exc: BaseException) -> str:
    """``refused``, ``transient`` or ``disk full`` for an error of one row's statement (the
    table in the module docstring)."""
    if isinstance(exc, (UnicodeError, OverflowError)):
        return REFUSED
    state = getattr(exc, "sqlstate", None)
    if state is None:  # raised by psycopg itself: the value, or the connection
        return REFUSED if isinstance(exc, (psycopg.DataError, psycopg.ProgrammingError)) else TRANSIENT
    if state == DISK_FULL_STATE or any(t in str(exc).lower() for t in DISK_FULL_TEXT):
        return DISK_FULL
    return REFUSED if state[:2] in REFUSED_CLASSES else TRANSIENT


def _message(exc: BaseException) -> str:
    """The server's primary message (no detail, which may quote the row), else the error's first line."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    lines = str(exc).strip().splitlines()
    return primary or (lines[0] if lines else type(exc).__name__)


def refusal(exc: BaseException) -> Refused:
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return Refused(f"PostgreSQL cannot hold the row ({type(exc).__name__}, found before sending: "
                       f"{_message(exc)})")
    return Refused(f"PostgreSQL refused the row (SQLSTATE {state}: {_message(exc)})")


def conninfo(s: PostgresSettings) -> str:
    """The libpq connection string of the settings (POSTGRES_DSN, else the parts)."""
    if s.postgres_dsn is not None:
        return secret(s.postgres_dsn)
    return make_conninfo(host=s.postgres_host, port=s.postgres_port, dbname=s.postgres_db, user=s.postgres_user,
                         password=secret(s.postgres_password))


def where(s: PostgresSettings) -> str:
    """The server and database, without credentials, for messages."""
    try:
        info = conninfo_to_dict(conninfo(s))
    except psycopg.Error:
        return "(an unreadable POSTGRES_DSN)"
    return (f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', 5432)}/"
            f"{info.get('dbname', '')} ({TABLE})")


def connect(s: PostgresSettings) -> psycopg.Connection:
    """An autocommit connection (transactions are explicit blocks) with durable commits
    and a bound on every statement."""
    options = f"-c synchronous_commit=on -c statement_timeout={s.postgres_statement_timeout_ms}"
    return psycopg.connect(conninfo(s), autocommit=True, connect_timeout=s.postgres_connect_timeout_s,
                           options=options, application_name="iot-pipeline")


def _broken(conn: psycopg.Connection | None, exc: BaseException) -> bool:
    return conn is None or conn.closed or conn.broken or isinstance(exc, (psycopg.OperationalError,
                                                                          psycopg.InterfaceError))


class PostgresSink:
    """The DB writer's PostgreSQL sink (see the module docstring for its outcomes)."""

    name = "PostgreSQL"

    def __init__(self, settings: PostgresSettings):
        self.settings, self.where = settings, where(settings)
        self.conn: psycopg.Connection | None = None

    @classmethod
    def open(cls, s: PostgresSettings) -> "PostgresSink":
        return cls(s)  # connects at the first prepare or write: the server may not be up yet

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.settings)
        return self.conn

    def prepare(self) -> None:
        try:
            ensure_schema(self._connection())
        except psycopg.Error as exc:
            self._drop(exc)
            raise StoreError(f"PostgreSQL {where(self.settings)}: {exc}") from None

    def write(self, batch: list[Upsert]) -> list[WriteOutcome]:
        if not batch:
            return []
        conn = None
        try:
            conn = self._connection()
            try:
                with conn.transaction():
                    self._send_all(conn, batch)
                return [STORED] * len(batch)
            except (psycopg.Error, UnicodeError, OverflowError) as exc:
                if classify(exc) != REFUSED:
                    raise
            return self._row_by_row(conn, batch)
        except (psycopg.Error, UnicodeError, OverflowError) as exc:
            kind = classify(exc)
            self._drop(exc)
            return [Transient(f"{type(exc).__name__}: {_message(exc)}",
                              DISK_FULL if kind == DISK_FULL else TRANSIENT)] * len(batch)

    @staticmethod
    def _send_all(conn: psycopg.Connection, batch: list[Upsert]) -> None:
        groups: dict[tuple, tuple[sql.Composed, list]] = {}
        for u in batch:
            statement, params = statement_of(u)
            groups.setdefault((tuple(u.fields), tuple(u.first)), (statement, []))[1].append(params)
        with conn.cursor() as cur:
            for statement, rows in groups.values():
                cur.executemany(statement, rows)

    @staticmethod
    def _row_by_row(conn: psycopg.Connection, batch: list[Upsert]) -> list[WriteOutcome]:
        """One transaction, each row in a SAVEPOINT: a refused row is rolled back alone;
        anything else ends the transaction (raised)."""
        outcomes: list[WriteOutcome] = []
        with conn.transaction(), conn.cursor() as cur:
            for u in batch:
                try:
                    with conn.transaction():
                        cur.execute(*statement_of(u))
                    outcomes.append(STORED)
                except (psycopg.Error, UnicodeError, OverflowError) as exc:
                    if classify(exc) != REFUSED:
                        raise
                    outcomes.append(refusal(exc))
        return outcomes

    def _drop(self, exc: BaseException) -> None:
        """Forget a connection that failed, so the next call makes a new one."""
        if self.conn is not None and _broken(self.conn, exc):
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class PostgresReader:
    """Reads ``iot_image_data`` (and the replay tool's ``iot_dlq_replays``) back.  A table
    not created yet (no DB writer has prepared the database) reads as empty, as a
    MongoDB collection that does not exist does."""

    name = "PostgreSQL"

    def __init__(self, s: PostgresSettings):
        self.settings, self.conn = s, None
        self.where = where(s)
        self.prepared = False

    def _run(self, fn, missing=None):
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.settings)
            return fn(self.conn)
        except psycopg.errors.UndefinedTable:
            return missing
        except psycopg.Error as exc:
            if self.conn is not None and _broken(self.conn, exc):
                self.close()
            raise StoreError(f"PostgreSQL {self.where}: {exc}") from None

    def _select(self, fields: Iterable[str], where_sql: sql.Composable, params, tail=sql.SQL("")) -> list[dict]:
        names = [IMAGE_ID, *(f for f in dict.fromkeys(fields) if f in COLUMNS)]
        query = sql.SQL("SELECT {} FROM {} WHERE {}{}").format(_ident(*names), sql.Identifier(TABLE), where_sql, tail)
        rows = self._run(lambda conn: conn.execute(query, params).fetchall(), [])
        # A NULL column is a field the document lacks: absent, as in MongoDB.
        return [{n: v for n, v in zip(names, row) if v is not None} for row in rows]

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def by_ids(self, image_ids: Iterable[str], fields: Iterable[str]) -> Iterator[dict]:
        ids, fields = list(image_ids), list(fields)
        for start in range(0, len(ids), 1000):
            yield from self._select(fields, sql.SQL("image_id = ANY(%s)"), (ids[start:start + 1000],))

    def by_producers(self, producer_ids: Iterable[str] | None, fields: Iterable[str]) -> Iterator[dict]:
        if producer_ids is None:
            yield from self._select(fields, sql.SQL("TRUE"), ())
        else:
            yield from self._select(fields, sql.SQL("producer_id = ANY(%s)"), (list(producer_ids),))

    def count(self, *, producer_ids: Iterable[str] | None = None, with_prediction: bool = False) -> int:
        conditions, params = [sql.SQL("TRUE")], []
        if producer_ids is not None:
            conditions.append(sql.SQL("producer_id = ANY(%s)"))
            params.append(list(producer_ids))
        if with_prediction:
            conditions.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier(PREDICTION)))
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(sql.Identifier(TABLE),
                                                                   sql.SQL(" AND ").join(conditions))
        return self._run(lambda conn: conn.execute(query, params).fetchone()[0], 0)

    def latest(self, n: int, fields: Iterable[str]) -> list[dict]:
        condition = sql.SQL("{} IS NOT NULL AND {} IS NOT NULL").format(sql.Identifier(PREDICTION),
                                                                          sql.Identifier(IMAGE))
        tail = sql.SQL(" ORDER BY {} DESC NULLS LAST LIMIT %s").format(sql.Identifier(PREDICTION_STORED_AT))
        return self._select(fields, condition, (n,), tail)

    @staticmethod
    def _older() -> sql.Composed:
        """Older than the parameter (twice): stored_at, else prediction_stored_at (AGE_FIELDS)."""
        first, second = map(sql.Identifier, AGE_FIELDS)
        return sql.SQL("({0} < %s OR ({0} IS NULL AND {1} < %s))").format(first, second)

    def expiring(self, before: float, limit: int, fields: Iterable[str]) -> list[dict]:
        tail = sql.SQL(" ORDER BY COALESCE({}) LIMIT %s").format(_ident(*AGE_FIELDS))
        return self._select([*fields, *AGE_FIELDS], self._older(), (before, before, limit), tail)

    def delete(self, image_ids: Iterable[str], before: float) -> int:
        query = sql.SQL("DELETE FROM {} WHERE image_id = ANY(%s) AND {}").format(sql.Identifier(TABLE),
                                                                                  self._older())
        return self._run(lambda conn: conn.execute(query, (list(image_ids), before, before)).rowcount, 0)

    def replay_record(self, ref: str) -> dict | None:
        query = sql.SQL("SELECT record FROM {} WHERE ref = %s").format(sql.Identifier(REPLAYS))
        row = self._run(lambda conn: conn.execute(query, (ref,)).fetchone())
        return dict(row[0]) if row else None

    def record_replay(self, ref: str, record: dict) -> None:
        # Fields merged into an earlier record, as MongoDB's $set does.
        query = sql.SQL("INSERT INTO {0} (ref, record) VALUES (%s, %s) ON CONFLICT (ref) DO UPDATE SET "
                        "record = {0}.record || EXCLUDED.record").format(sql.Identifier(REPLAYS))

        def write(conn):
            if not self.prepared:
                ensure_schema(conn)
                self.prepared = True
            conn.execute(query, (ref, Jsonb(record)))
        self._run(write)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
