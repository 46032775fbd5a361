"""The names and limits of the wire contract, in one place (docs/ARCHITECTURE.md, "Wire contract").

Every name a message, a record header, a stored document or a run file uses is defined
here and imported everywhere else: a field or header name is a string literal in this
module only.  The typed models that validate messages are :mod:`common.models`; parsing
and building messages is :mod:`common.schema`; dead letters :mod:`common.deadletter`.

Schema versions are numbered per kind of record: image messages (1: JSON with a base64
PNG, the seeds' format; 2: the image file as the value, the metadata in headers), result
messages (1), and the dead-letter header block (``dlq.schema`` 2).
"""

from __future__ import annotations

# ---------------------------------------------------------------- message fields
SCHEMA = "schema"
IMAGE_ID = "image_id"
DEVICE_ID = "device_id"
PRODUCER_ID = "producer_id"
SEQ = "seq"
SENT_AT = "sent_at"
LABEL = "label"
DATASET = "dataset"
FORMAT = "format"
IMAGE = "image"  # schema 1: base64 text; in a stored document: the image file's bytes
PREDICTION = "prediction"
CONFIDENCE = "confidence"
MODEL = "model"
RECEIVED_AT = "received_at"  # the inference consumer polled the image
INFERRED_AT = "inferred_at"  # the model's output was ready (service clock)
PUBLISHED_AT = "published_at"  # the result was handed to the Kafka producer

# What every image message says about its image (either schema), in contract order.
IMAGE_META_FIELDS = (SCHEMA, IMAGE_ID, DEVICE_ID, PRODUCER_ID, SEQ, SENT_AT, LABEL, DATASET, FORMAT)
RESULT_MESSAGE_FIELDS = (SCHEMA, IMAGE_ID, DEVICE_ID, PRODUCER_ID, SEQ, SENT_AT, LABEL, PREDICTION, CONFIDENCE, MODEL,
                         RECEIVED_AT, INFERRED_AT, PUBLISHED_AT)

# ---------------------------------------------------------------- versions
IMAGE_SCHEMA_JSON = 1  # one JSON object, the 32x32 PNG in base64
IMAGE_SCHEMA_HEADERS = 2  # the image file as the value, IMAGE_META_FIELDS as headers
RESULT_SCHEMA = 1
IMAGE_SCHEMAS = (IMAGE_SCHEMA_JSON, IMAGE_SCHEMA_HEADERS)

# ---------------------------------------------------------------- record headers
# A schema-2 image record carries IMAGE_META_FIELDS as headers of the same names (no
# ``label`` header for a null label); its ``schema`` header marks it as schema 2.
IMAGE_HEADERS = IMAGE_META_FIELDS
# Result records carry the producer id as their key and in this header: each producer reads
# only the partition its id hashes to and skips other producers' records by the header.
RESULT_PRODUCER_HEADER = PRODUCER_ID
# A replayed record: "<dlq topic>:<partition>:<offset>" of the dead letter it replays.
REPLAY_OF = "replay.of"
# The dead-letter block (common.deadletter), in the order it is written.
DLQ_PREFIX = "dlq."
DLQ_SCHEMA = 2
H_DLQ_SCHEMA = "dlq.schema"
H_DLQ_REASON = "dlq.reason"
H_DLQ_TOPIC = "dlq.source_topic"
H_DLQ_PARTITION = "dlq.partition"
H_DLQ_OFFSET = "dlq.offset"
H_DLQ_TIMESTAMP = "dlq.source_timestamp"
H_DLQ_FAILED_AT = "dlq.failed_at"
H_DLQ_VALUE_NULL = "dlq.value_null"  # "1": the original value was null (and so was the key)
H_DLQ_NULL_HEADERS = "dlq.null_headers"  # "0,3": original headers whose value was null
H_DLQ_OMITTED = "dlq.omitted"  # over the size limit: the original value's size in bytes
H_DLQ_VALUE_SHA256 = "dlq.value_sha256"

# ---------------------------------------------------------------- image formats
PNG, JPEG = "png", "jpeg"
IMAGE_FORMATS = (PNG, JPEG)  # schema 2 and the HTTP service; schema 1 carries PNG only
CONTENT_TYPES = {PNG: "image/png", JPEG: "image/jpeg"}
FILE_SUFFIXES = {PNG: (".png",), JPEG: (".jpg", ".jpeg")}
IMAGE_SIZE = 32  # CIFAR images are 32x32 RGB

# ---------------------------------------------------------------- limits
# Text fields are copied into the result message: unbounded, a valid image could yield a
# result too big for the DB consumer.
MAX_TEXT_CHARS = 256
MAX_IMAGE_MESSAGE_BYTES = 256 * 1024  # the default of MAX_MESSAGE_BYTES
MAX_RESULT_MESSAGE_BYTES = 64 * 1024
# Longest base64 text of a schema-1 image, checked before anything is decoded: 8 KiB of
# base64 is a 6 KiB PNG, twice the largest 32x32 RGB PNG (3 KiB of pixels + headers).
MAX_IMAGE_B64_CHARS = 8 * 1024
# The HTTP service's defaults (MAX_REQUEST_IMAGES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS).
DEFAULT_MAX_REQUEST_IMAGES = 128
DEFAULT_MAX_IMAGE_BYTES = 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def b64_chars(n_bytes: int) -> int:
    """Length of the base64 text of ``n_bytes`` bytes (padded)."""
    return 4 * ((n_bytes + 2) // 3)


# ---------------------------------------------------------------- the stored document
# One document (row) per image, keyed by IMAGE_ID; the image half and the result half
# touch disjoint fields, the first-stored timestamps keep their earliest value.
STORED_AT = "stored_at"  # first time the image was stored
PREDICTION_STORED_AT = "prediction_stored_at"  # first time its prediction was stored
DOCUMENT_IMAGE_FIELDS = (SCHEMA, DEVICE_ID, PRODUCER_ID, SEQ, SENT_AT, LABEL, DATASET, FORMAT)
DOCUMENT_RESULT_FIELDS = (DEVICE_ID, PRODUCER_ID, SEQ, SENT_AT, PREDICTION, CONFIDENCE, MODEL,
                          RECEIVED_AT, INFERRED_AT, PUBLISHED_AT)
# Every timestamp a document can hold (unix seconds), in pipeline order.
TIMESTAMPS = (SENT_AT, RECEIVED_AT, INFERRED_AT, PUBLISHED_AT, STORED_AT, PREDICTION_STORED_AT)

# ---------------------------------------------------------------- run files (common.rundir)
RESULT_AT = "result_at"  # the producer received the result (its clock)
E2E_MS = "e2e_ms"  # RESULT_AT - SENT_AT
LATENCY_COLUMNS = (IMAGE_ID, DEVICE_ID, PRODUCER_ID, SEQ, SENT_AT, RESULT_AT, E2E_MS, LABEL, PREDICTION, MODEL)
STAGE_COLUMNS = (IMAGE_ID, SENT_AT, RECEIVED_AT, INFERRED_AT, PUBLISHED_AT, RESULT_AT, STORED_AT)
OPTIONAL_STAGE_COLUMNS = (PREDICTION_STORED_AT,)
