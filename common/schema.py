"""The wire contract: image and result messages (see docs/ARCHITECTURE.md; dead letters are
:mod:`common.deadletter`).

Image messages come in two schemas, both read by every consumer (consumers upgrade
before producers; a producer's ``IMAGE_SCHEMA`` says which it writes):

* schema 1: one JSON object, the 32x32 PNG in base64 (:func:`parse_image_message`);
* schema 2: the value is the image file itself (PNG or JPEG, any size), the metadata
  travels in record headers (:func:`image_record`, :func:`parse_image_record`): no
  base64, no JSON around the pixels.  A record with a ``schema`` header is schema 2.

The contract itself is the typed models of :mod:`common.models`; this module is the
interface the producers and consumers call: ``parse_*`` validate a Kafka message
value through the models (``model_validate_json``) and raise :class:`InvalidMessage`
with one readable reason, ``make_*`` build a message through the models, so nothing
is published that the consumers would refuse.

Every message carries ``schema``; consumers reject versions they do not know
with a reason instead of guessing.  Validation here is cheap on purpose: the PNG
header is checked (signature, 32x32, 8-bit RGB) without decoding the pixels, so
the inference consumer does not decode an image the service will decode again.
"""

from __future__ import annotations

import base64
import io
import re
import uuid
from typing import NamedTuple

from pydantic_core import to_json

from common.wire import (CONFIDENCE, CONTENT_TYPES, DATASET, DEVICE_ID, FORMAT, IMAGE, IMAGE_FORMATS, IMAGE_HEADERS,
                         IMAGE_ID, IMAGE_SCHEMA_HEADERS, IMAGE_SCHEMA_JSON, IMAGE_SCHEMAS, IMAGE_SIZE, INFERRED_AT,
                         LABEL, MAX_IMAGE_MESSAGE_BYTES, PNG, MAX_RESULT_MESSAGE_BYTES, MAX_TEXT_CHARS, MODEL,
                         PREDICTION, PRODUCER_ID, PUBLISHED_AT, RECEIVED_AT, RESULT_SCHEMA, SCHEMA, SENT_AT, SEQ)

from common.models import (ImageMessage,
                           ImageRecordMeta, InvalidMessage, ResultMessage, check_image_magic,
                           check_png_header, decode_image_b64, sniff_format, validate, validate_json)

__all__ = ["CONTENT_TYPES", "IMAGE_FORMATS", "IMAGE_SCHEMA_HEADERS", "IMAGE_SCHEMA_JSON", "IMAGE_SIZE", "ImageRecord",
           "MAX_TEXT_CHARS", "RESULT_SCHEMA", "InvalidMessage", "check_png_header", "decode_image_b64", "dumps",
           "encode_png", "image_record", "make_image_message", "make_result_message", "parse_image_message",
           "parse_image_record", "parse_result_message", "sniff_format"]

# A message is built before it is stamped (``sent_at``, ``published_at`` are set right
# before the send); it is validated with this stand-in for the missing stamp.
_UNSTAMPED = 0.0


# ---------------------------------------------------------------- images

def encode_png(pixels) -> bytes:
    """uint8 HxWx3 array -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_image_message(*, image: bytes, device_id: str, producer_id: str, seq: int,
                       label: str | None, dataset: str, image_id: str | None = None,
                       schema: int = IMAGE_SCHEMA_JSON, format: str = PNG) -> dict:
    """A new image message's fields; ``sent_at`` is stamped by the producer right before sending.

    Schema 1: the JSON message, ``image`` in base64 (``image`` must be a 32x32 RGB PNG).
    Schema 2: the metadata only (no ``image``); ``image`` is the image file, PNG or JPEG as
    ``format`` says, and :func:`image_record` makes the record.  Raises InvalidMessage if
    the message would not pass :func:`parse_image_message` / :func:`parse_image_record`."""
    fields = {IMAGE_ID: image_id or str(uuid.uuid4()), DEVICE_ID: device_id, PRODUCER_ID: producer_id,
              SEQ: seq, SENT_AT: _UNSTAMPED, LABEL: label, DATASET: dataset, FORMAT: format}
    if schema == IMAGE_SCHEMA_HEADERS:
        msg = validate(ImageRecordMeta, {SCHEMA: IMAGE_SCHEMA_HEADERS, **fields}).wire()
        check_image_magic(image, msg[FORMAT])
    elif schema == IMAGE_SCHEMA_JSON:
        msg = validate(ImageMessage, {SCHEMA: IMAGE_SCHEMA_JSON, **fields,
                                      IMAGE: base64.b64encode(image).decode("ascii")}).wire()
    else:
        raise InvalidMessage(f"unknown schema version {schema!r} (image messages are {_SCHEMAS_TEXT})")
    msg[SENT_AT] = None
    return msg


class ImageRecord(NamedTuple):
    """A valid image message of either schema: its metadata (``IMAGE_META_FIELDS``, and
    schema 1's base64 ``image``) and the image file's bytes (PNG or JPEG, as ``meta[FORMAT]``
    says)."""

    meta: dict
    image: bytes


def parse_image_message(raw: bytes | None, *, max_bytes: int = MAX_IMAGE_MESSAGE_BYTES) -> ImageRecord:
    """Validate a schema-1 image message, or raise InvalidMessage."""
    msg = validate_json(ImageMessage, raw, max_bytes=max_bytes)
    return ImageRecord(msg.wire(), msg.png)


# ---------------------------------------------------------------- schema 2: image records

_SCHEMAS_TEXT = " or ".join(map(str, IMAGE_SCHEMAS))
_HEADER_NUMBERS = (SCHEMA, SEQ, SENT_AT)
_HEADERS, _INT_HEADERS = frozenset(IMAGE_HEADERS), frozenset((SCHEMA, SEQ))  # looked up per header
_HEADER_TEXT = tuple(h for h in IMAGE_HEADERS if h not in _HEADER_NUMBERS)
_INT = re.compile(rb"-?[0-9]{1,20}")
_NUMBER = re.compile(rb"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")


def image_record(msg: dict, image: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """``(value, headers)`` of a schema-2 image record for ``msg`` (from
    :func:`make_image_message` with ``schema=2``, ``sent_at`` stamped): the value is the
    image file as it is, every field a header (no ``label`` header for a null label)."""
    headers = [(SCHEMA, b"%d" % IMAGE_SCHEMA_HEADERS), (SEQ, str(msg[SEQ]).encode()),
               (SENT_AT, repr(float(msg[SENT_AT])).encode())]
    headers += [(k, msg[k].encode()) for k in _HEADER_TEXT if msg.get(k) is not None]
    return image, headers


def _header_fields(headers) -> dict:
    """The contract's headers of a record as the model's input (unknown headers ignored:
    a replayed record carries ``replay.of``)."""
    fields: dict = {}
    for key, value in headers:
        if key not in _HEADERS:
            continue
        if key in fields:
            raise InvalidMessage(f"header '{key}' appears more than once")
        if value is None:
            continue
        if key in _INT_HEADERS:
            if not _INT.fullmatch(value):
                raise InvalidMessage(f"header '{key}' is not a decimal integer")
            fields[key] = int(value)
        elif key == SENT_AT:
            if not _NUMBER.fullmatch(value):
                raise InvalidMessage(f"header '{SENT_AT}' is not a decimal number")
            fields[key] = float(value)
        else:
            try:
                fields[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidMessage(f"header '{key}' is not valid UTF-8 text") from None
    return fields


def is_image_record(headers) -> bool:
    """A schema-2 record (it has a ``schema`` header); schema 1 records have no headers."""
    return any(k == SCHEMA for k, _v in headers or ())


def parse_image_record(value: bytes | None, headers=None, *,
                       max_bytes: int = MAX_IMAGE_MESSAGE_BYTES) -> ImageRecord:
    """Validate an image record of either schema, or raise InvalidMessage."""
    if not is_image_record(headers):
        return parse_image_message(value, max_bytes=max_bytes)
    fields = _header_fields(headers)
    if fields.get(SCHEMA) != IMAGE_SCHEMA_HEADERS:
        raise InvalidMessage(f"unknown schema version {fields.get(SCHEMA)!r} (expected {_SCHEMAS_TEXT})")
    if value is None:
        raise InvalidMessage("empty message (null value)")
    if len(value) > max_bytes:
        raise InvalidMessage(f"message is {len(value)} bytes, over the {max_bytes}-byte limit")
    fields.setdefault(LABEL, None)
    try:
        msg = validate(ImageRecordMeta, fields).wire()
    except InvalidMessage as exc:  # the fields are headers here
        raise InvalidMessage(exc.reason.replace("field '", "header '", 1)) from None
    check_image_magic(value, msg[FORMAT])
    return ImageRecord(msg, value)


# ---------------------------------------------------------------- results

def parse_result_message(raw: bytes | None, *, max_bytes: int = MAX_RESULT_MESSAGE_BYTES) -> ResultMessage:
    """Validate a result message (typed: ``result.prediction`` ...), or raise InvalidMessage."""
    return validate_json(ResultMessage, raw, max_bytes=max_bytes)


def make_result_message(image: dict, *, prediction: str, confidence: float, model: str,
                        received_at: float, inferred_at: float) -> dict:
    """The result for a parsed image message; ``published_at`` is stamped right before
    the send.  Raises InvalidMessage if the result would not pass :func:`parse_result_message`."""
    msg = validate(ResultMessage, {
        SCHEMA: RESULT_SCHEMA, IMAGE_ID: image[IMAGE_ID], DEVICE_ID: image[DEVICE_ID], PRODUCER_ID: image[PRODUCER_ID],
        SEQ: image[SEQ], SENT_AT: image[SENT_AT], LABEL: image.get(LABEL), PREDICTION: prediction,
        CONFIDENCE: confidence, MODEL: model, RECEIVED_AT: received_at, INFERRED_AT: inferred_at,
        PUBLISHED_AT: _UNSTAMPED,
    }).wire()
    msg[PUBLISHED_AT] = None
    return msg


def dumps(msg: dict) -> bytes:
    """Compact JSON (pydantic-core's serializer: 3-4x the standard library's speed)."""
    return to_json(msg)
