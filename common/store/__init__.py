"""The image store behind one interface (:mod:`common.store.base`): the DB writer's
:class:`Sink` and the :class:`StoreReader` everything else reads with.  STORE picks the
store (``common.store.opening``): MongoDB (``common.store.mongodb``) or PostgreSQL
(``common.store.postgres``); only the adapters import a database client."""

from __future__ import annotations

from common.store.base import (IMAGE, IMAGE_FIELDS, PREDICTION, PREDICTION_STORED_AT, RESULT_FIELDS,
                               SENT_AT, STORED, STORED_AT, TIMESTAMPS, Refused, Sink, Stored, StoreError,
                               StoreReader, Transient, Upsert, WriteOutcome, image_upsert, result_upsert)
from common.store.opening import open_reader, open_sink

__all__ = ["IMAGE", "IMAGE_FIELDS", "PREDICTION", "PREDICTION_STORED_AT", "RESULT_FIELDS", "SENT_AT", "STORED",
           "STORED_AT", "TIMESTAMPS", "Refused", "Sink", "Stored", "StoreError", "StoreReader", "Transient",
           "Upsert", "WriteOutcome", "image_upsert", "open_reader", "open_sink", "result_upsert"]

