"""MongoDB connection and the indexes the pipeline relies on."""

from __future__ import annotations

from pymongo import ASCENDING, MongoClient
from pymongo.write_concern import WriteConcern

from common.settings import MongoSettings, secret


def connect(s: MongoSettings):
    return MongoClient(secret(s.mongo_uri), serverSelectionTimeoutMS=s.mongo_timeout_ms,
                       connectTimeoutMS=s.mongo_timeout_ms,
                       socketTimeoutMS=s.mongo_socket_timeout_ms, retryWrites=False)


def write_concern(s: MongoSettings) -> WriteConcern:
    """MONGO_WRITE_CONCERN_W / MONGO_WRITE_JOURNAL: how durable an acknowledged write is."""
    return WriteConcern(w=s.mongo_write_concern_w, j=s.mongo_write_journal)


def images_collection(client, s: MongoSettings):
    """``iot.images`` with the configured write concern (the DB consumer's bulk_write)."""
    return client[s.mongo_database][s.mongo_collection].with_options(write_concern=write_concern(s))


def ensure_indexes(collection) -> None:
    """``_id`` is the image id (unique by construction); these serve the reports."""
    collection.create_index([("producer_id", ASCENDING), ("seq", ASCENDING)])
    collection.create_index([("device_id", ASCENDING), ("sent_at", ASCENDING)])
    collection.create_index([("prediction", ASCENDING)])
