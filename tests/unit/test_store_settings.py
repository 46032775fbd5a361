"""STORE picks the store (common.store.opening); PostgreSQL's and CouchDB's settings, secrets masked."""

from __future__ import annotations

import pytest

from common.settings import CouchSettings, PostgresSettings, SettingsError, StoreSettings, describe


def test_the_store_is_mongodb_unless_store_says_otherwise(monkeypatch):
    monkeypatch.delenv("STORE", raising=False)
    assert StoreSettings().store == "mongodb"
    for value, expected in (("postgres", "postgres"), ("PostgreS", "postgres"), ("", "mongodb"),
                            (" CouchDB ", "couchdb")):
        monkeypatch.setenv("STORE", value)
        assert StoreSettings().store == expected


def test_an_unknown_store_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("STORE", "sqlite")
    with pytest.raises(SettingsError, match="STORE='sqlite'.*'mongodb', 'postgres' or 'couchdb'"):
        StoreSettings()


def test_postgres_passwords_are_masked_and_a_dsn_is_checked():
    shown = describe(PostgresSettings(postgres_dsn="postgresql://iot:s3cret@db:5432/iot", postgres_password="pw2"))
    assert "s3cret" not in shown and "pw2" not in shown
    assert "POSTGRES_DSN=postgresql://iot:***@db:5432/iot" in shown and "POSTGRES_PASSWORD=***" in shown
    assert "s3cret" not in describe(PostgresSettings(postgres_dsn="host=db password=s3cret"))
    with pytest.raises(SettingsError, match=r"POSTGRES_DSN=\*\*\*: .*postgresql:// URI"):
        PostgresSettings(postgres_dsn="db:5432")
    assert PostgresSettings(postgres_dsn="").postgres_dsn is None


def test_couchdb_defaults_secrets_masked_and_names_checked():
    s = CouchSettings()
    assert (s.couchdb_url.get_secret_value(), s.couchdb_database) == ("http://127.0.0.1:5984", "img_db")
    shown = describe(CouchSettings(couchdb_url="http://admin:s3cret@couch:5984/", couchdb_user="iot",
                                   couchdb_password="pw2"))
    assert "s3cret" not in shown and "pw2" not in shown
    assert "COUCHDB_URL=http://admin:***@couch:5984\n" in shown and "COUCHDB_PASSWORD=***" in shown
    with pytest.raises(SettingsError, match="COUCHDB_URL=.*http:// or https://"):
        CouchSettings(couchdb_url="couch:5984")
    with pytest.raises(SettingsError, match="COUCHDB_DATABASE"):
        CouchSettings(couchdb_database="_users")


def test_open_sink_and_open_reader_follow_store(monkeypatch):
    # Neither connects when opened: no server is needed to see which adapter STORE picks.
    from common.store import open_reader, open_sink
    from common.store.mongodb import MongoSink
    from common.store.postgres import PostgresReader, PostgresSink

    monkeypatch.setenv("STORE", "postgres")
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cret")
    sink, reader = open_sink(), open_reader()
    assert isinstance(sink, PostgresSink) and isinstance(reader, PostgresReader)
    assert reader.where == "postgresql://iot@127.0.0.1:5432/iot (iot_image_data)"
    sink.close(), reader.close()
    mongo = open_sink(store="mongodb")
    assert isinstance(mongo, MongoSink)
    mongo.close()
    from common.store.couchdb import CouchSink
    from common.store.couchdb_reader import CouchReader

    monkeypatch.setenv("STORE", "couchdb")
    monkeypatch.setenv("COUCHDB_URL", "http://iot:s3cret@couch:5985")
    sink, reader = open_sink(), open_reader()
    assert isinstance(sink, CouchSink) and isinstance(reader, CouchReader)
    assert reader.where == sink.where == "http://couch:5985 (img_db)"
    sink.close(), reader.close()


def test_a_stacks_endpoints_name_the_store_the_demo_reads_and_its_table_says_which():
    from analysis.summary import format_table
    from common.store.couchdb_reader import CouchReader
    from common.store.mongodb import MongoReader
    from common.store.opening import reader_of
    from common.store.postgres import PostgresReader

    reader = reader_of({"STORE": "postgres", "POSTGRES_DSN": "postgresql://iot:pw@127.0.0.1:5999/iot"})
    assert isinstance(reader, PostgresReader) and reader.where.startswith("postgresql://iot@127.0.0.1:5999/iot")
    reader.close()
    reader = reader_of({"STORE": "couchdb", "COUCHDB_URL": "http://127.0.0.1:5997", "COUCHDB_USER": "iot",
                        "COUCHDB_PASSWORD": "pw"})
    assert isinstance(reader, CouchReader) and reader.where == "http://127.0.0.1:5997 (img_db)"
    assert reader.client.session.auth == ("iot", "pw")
    reader.close()
    reader = reader_of({"MONGO_URI": "mongodb://127.0.0.1:5998"})  # a stack.env of an older release
    assert isinstance(reader, MongoReader)
    reader.close()
    summary = {"sent": 3, "results": 3, "stored": 3, "stored_with_prediction": 3, "lost": 0, "model": None}
    assert "stored in PostgreSQL    3" in format_table({**summary, "store": "PostgreSQL"})
    assert "stored in MongoDB       3" in format_table(summary)


@pytest.mark.parametrize("store, names, not_names", [
    ("mongodb", ("STORE=mongodb", "MONGO_URI=mongodb://iot:***@db:27017"), ("POSTGRES_", "COUCHDB_")),
    ("postgres", ("STORE=postgres", "POSTGRES_HOST=db", "POSTGRES_PASSWORD=***"), ("MONGO_", "COUCHDB_")),
    ("couchdb", ("STORE=couchdb", "COUCHDB_URL=http://db:5984", "COUCHDB_PASSWORD=***"), ("MONGO_", "POSTGRES_")),
])
def test_the_configured_store_is_what_the_tools_describe_and_open(monkeypatch, store, names, not_names):
    """The DB writer, the DLQ tool and the dashboard log the settings of the store STORE names
    (and only those, secrets masked) and open that store."""
    from common.store.opening import configured, open_configured

    monkeypatch.setenv("STORE", store)
    monkeypatch.setenv("MONGO_URI", "mongodb://iot:s3cret@db:27017")
    monkeypatch.setenv("POSTGRES_HOST", "db")
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cret")
    monkeypatch.setenv("COUCHDB_URL", "http://db:5984")
    monkeypatch.setenv("COUCHDB_PASSWORD", "s3cret")
    settings, backend = configured()
    text = describe(settings, backend)
    for name in names:
        assert name in text, text
    assert not [line for line in text.splitlines() if line.strip().startswith(not_names)], text
    assert "s3cret" not in text
    reader = open_configured(settings, backend)
    try:
        assert reader.name.lower().startswith({"mongodb": "mongo", "postgres": "postgres", "couchdb": "couch"}[store])
    finally:
        reader.close()


def test_the_dlq_tool_refuses_a_mongo_uri_for_another_store(monkeypatch, capsys):
    from consumers import dlq

    monkeypatch.setenv("STORE", "postgres")
    with pytest.raises(SystemExit) as exc:
        dlq.main(["replay", "--all", "--mongo-uri", "mongodb://db"])
    assert exc.value.code == 2
    assert "--mongo-uri is MongoDB's, and STORE is postgres" in capsys.readouterr().err


def test_the_store_process_a_benchmark_charges_is_the_store_stores():
    """experiments/capacity.py charges the store's CPU to the stack component that serves it."""
    from stack.stores import store_component

    assert [store_component(s) for s in (None, "", "mongodb", "postgres", " CouchDB ")] == \
        ["mongo", "mongo", "mongo", "postgres", "couchdb"]


def test_a_deployed_store_is_found_by_the_settings_that_name_its_server(monkeypatch):
    """The experiment on the producer VM runs on the deployed pipeline when Kafka and the
    store STORE names are given (its env file: MONGO_URI, POSTGRES_DSN or COUCHDB_URL ...),
    and reads that store back (reader_of)."""
    from common.store.opening import reader_of
    from stack.stores import external_endpoints

    for name in ("MONGO_URI", "POSTGRES_DSN", "POSTGRES_HOST", "COUCHDB_URL", "COUCHDB_USER", "COUCHDB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for store in ("mongodb", "postgres", "couchdb"):
        monkeypatch.setenv("STORE", store)
        assert external_endpoints() is None, store              # none given: a local stack
    monkeypatch.setenv("STORE", "postgres")
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://iot:s3cret@10.0.0.4:5432/iot")
    assert external_endpoints() == {"STORE": "postgres", "POSTGRES_DSN": "postgresql://iot:s3cret@10.0.0.4:5432/iot"}
    monkeypatch.setenv("STORE", "couchdb")
    monkeypatch.setenv("COUCHDB_URL", "http://10.0.0.4:5984")
    monkeypatch.setenv("COUCHDB_USER", "iot")
    monkeypatch.setenv("COUCHDB_PASSWORD", "s3cret")
    found = external_endpoints()
    assert found == {"STORE": "couchdb", "COUCHDB_URL": "http://10.0.0.4:5984", "COUCHDB_USER": "iot",
                     "COUCHDB_PASSWORD": "s3cret"}
    reader = reader_of(found)
    try:
        assert reader.name == "CouchDB" and "10.0.0.4:5984" in reader.where and "s3cret" not in reader.where
    finally:
        reader.close()
    monkeypatch.setenv("STORE", "mongodb")
    monkeypatch.setenv("MONGO_URI", "mongodb://10.0.0.4:27017")
    assert external_endpoints() == {"STORE": "mongodb", "MONGO_URI": "mongodb://10.0.0.4:27017"}
