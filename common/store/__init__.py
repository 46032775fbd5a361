"""The image store behind one interface (:mod:`common.store.base`): the DB writer's
:class:`Sink` and the :class:`StoreReader` everything else reads with.  STORE picks the
store (``common.store.opening``): MongoDB (``common.store.mongodb``), PostgreSQL
(``common.store.postgres``) or CouchDB (``common.store.couchdb``, over its HTTP API); only
the adapters import a database client.  The stored
document's field names are the wire contract's (``common.wire``), re-exported here."""

from __future__ import annotations

from common.store.base import (AGE_FIELDS, DISK_FULL, DOCUMENT_FIELDS, STORED, Refused, Sink, Stored, StoreError, StoreReader, Transient,
                               Upsert, WriteOutcome, image_upsert, result_upsert)
from common.store.opening import open_reader, open_sink
from common.wire import (DOCUMENT_IMAGE_FIELDS, DOCUMENT_RESULT_FIELDS, IMAGE, IMAGE_ID, PREDICTION,
                         PREDICTION_STORED_AT, SENT_AT, STORED_AT, TIMESTAMPS)

__all__ = ["AGE_FIELDS", "DISK_FULL", "DOCUMENT_FIELDS", "DOCUMENT_IMAGE_FIELDS", "DOCUMENT_RESULT_FIELDS", "IMAGE", "IMAGE_ID", "PREDICTION",
           "PREDICTION_STORED_AT", "SENT_AT", "STORED", "STORED_AT", "TIMESTAMPS", "Refused", "Sink", "Stored",
           "StoreError", "StoreReader", "Transient", "Upsert", "WriteOutcome", "image_upsert", "open_reader",
           "open_sink", "result_upsert"]

