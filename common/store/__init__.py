"""The image store behind one interface (:mod:`common.store.base`): the DB writer's
:class:`Sink` and the :class:`StoreReader` everything else reads with.  MongoDB is the
store (``common.store.mongodb``); only the adapters import a database client."""

from __future__ import annotations

from common.store.base import (IMAGE, IMAGE_FIELDS, PREDICTION, PREDICTION_STORED_AT, RESULT_FIELDS,
                               SENT_AT, STORED, STORED_AT, TIMESTAMPS, Refused, Sink, Stored, StoreError,
                               StoreReader, Transient, Upsert, WriteOutcome, image_upsert, result_upsert)

__all__ = ["IMAGE", "IMAGE_FIELDS", "PREDICTION", "PREDICTION_STORED_AT", "RESULT_FIELDS", "SENT_AT", "STORED",
           "STORED_AT", "TIMESTAMPS", "Refused", "Sink", "Stored", "StoreError", "StoreReader", "Transient",
           "Upsert", "WriteOutcome", "image_upsert", "open_reader", "open_sink", "result_upsert"]


def open_sink(mongo=None) -> Sink:
    """The configured store's sink (MONGO_* settings)."""
    from common.settings import MongoSettings
    from common.store.mongodb import MongoSink

    return MongoSink.open(mongo or MongoSettings())


def open_reader(mongo=None) -> StoreReader:
    """A reader of the configured store (MONGO_* settings, or the MongoSettings given)."""
    from common.settings import MongoSettings
    from common.store.mongodb import MongoReader

    return MongoReader(mongo or MongoSettings())
