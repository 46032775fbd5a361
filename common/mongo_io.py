"""MongoDB connection and the indexes the pipeline relies on."""

from __future__ import annotations

from pymongo import ASCENDING, MongoClient

from common.settings import MongoSettings, secret


def connect(s: MongoSettings):
    return MongoClient(secret(s.mongo_uri), serverSelectionTimeoutMS=s.mongo_timeout_ms,
                       connectTimeoutMS=s.mongo_timeout_ms,
                       socketTimeoutMS=s.mongo_socket_timeout_ms, retryWrites=False)


def images_collection(client, s: MongoSettings):
    return client[s.mongo_database][s.mongo_collection]


def ensure_indexes(collection) -> None:
    """``_id`` is the image id (unique by construction); these serve the reports."""
    collection.create_index([("producer_id", ASCENDING), ("seq", ASCENDING)])
    collection.create_index([("device_id", ASCENDING), ("sent_at", ASCENDING)])
    collection.create_index([("prediction", ASCENDING)])
