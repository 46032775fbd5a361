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

from pydantic_core import to_json

from common.models import (IMAGE_FORMATS, IMAGE_SCHEMA_V2, IMAGE_SIZE, MAX_IMAGE_MESSAGE_BYTES,
                           MAX_RESULT_MESSAGE_BYTES, MAX_TEXT_CHARS, SCHEMA_VERSION, ImageMessage,
                           ImageRecordMeta, InvalidMessage, ResultMessage, check_image_magic,
                           check_png_header, decode_image_b64, sniff_format, validate, validate_json)

__all__ = ["IMAGE_FORMATS", "IMAGE_SCHEMA_V2", "IMAGE_SIZE", "MAX_TEXT_CHARS", "SCHEMA_VERSION",
           "InvalidMessage", "check_png_header", "decode_image_b64", "dumps", "encode_png", "image_record",
           "make_image_message", "make_result_message", "parse_image_message", "parse_image_record",
           "parse_result_message", "sniff_format", "CONTENT_TYPES"]

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}

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


def make_image_message(*, png: bytes, device_id: str, producer_id: str, seq: int,
                       label: str | None, dataset: str, image_id: str | None = None,
                       schema: int = SCHEMA_VERSION, format: str = "png") -> dict:
    """A new image message's fields; ``sent_at`` is stamped by the producer right before sending.

    Schema 1: the JSON message, ``image`` in base64 (``png`` must be a 32x32 RGB PNG).
    Schema 2: the metadata only (no ``image``); ``png`` is the image file, PNG or JPEG as
    ``format`` says, and :func:`image_record` makes the record.  Raises InvalidMessage if
    the message would not pass :func:`parse_image_message` / :func:`parse_image_record`."""
    fields = {"image_id": image_id or str(uuid.uuid4()), "device_id": device_id, "producer_id": producer_id,
              "seq": seq, "sent_at": _UNSTAMPED, "label": label, "dataset": dataset}
    if schema == IMAGE_SCHEMA_V2:
        msg = validate(ImageRecordMeta, {"schema": IMAGE_SCHEMA_V2, **fields, "format": format}).wire()
        check_image_magic(png, msg["format"])
    elif schema == SCHEMA_VERSION:
        msg = validate(ImageMessage, {"schema": SCHEMA_VERSION, **fields, "format": format,
                                      "image": base64.b64encode(png).decode("ascii")}).wire()
    else:
        raise InvalidMessage(f"unknown schema version {schema!r} (image messages are 1 or 2)")
    msg["sent_at"] = None
    return msg


def parse_image_message(raw: bytes | None, *,
                        max_bytes: int = MAX_IMAGE_MESSAGE_BYTES) -> tuple[dict, bytes]:
    """Validate a schema-1 image message; returns (message, png bytes) or raises InvalidMessage."""
    msg = validate_json(ImageMessage, raw, max_bytes=max_bytes)
    return msg.wire(), msg.png


# ---------------------------------------------------------------- schema 2: image records

_V2_TEXT = ("image_id", "device_id", "producer_id", "label", "dataset", "format")
_V2_FIELDS = ("schema", "seq", "sent_at") + _V2_TEXT
_INT = re.compile(rb"-?[0-9]{1,20}")
_NUMBER = re.compile(rb"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")


def image_record(msg: dict, image: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """``(value, headers)`` of a schema-2 image record for ``msg`` (from
    :func:`make_image_message` with ``schema=2``, ``sent_at`` stamped): the value is the
    image file as it is, every field a header (no ``label`` header for a null label)."""
    headers = [("schema", b"2"), ("seq", str(msg["seq"]).encode()), ("sent_at", repr(float(msg["sent_at"])).encode())]
    headers += [(k, msg[k].encode()) for k in _V2_TEXT if msg.get(k) is not None]
    return image, headers


def _header_fields(headers) -> dict:
    """The contract's headers of a record as the model's input (unknown headers ignored:
    a replayed record carries ``replay.of``)."""
    fields: dict = {}
    for key, value in headers:
        if key not in _V2_FIELDS:
            continue
        if key in fields:
            raise InvalidMessage(f"header '{key}' appears more than once")
        if value is None:
            continue
        if key in ("schema", "seq"):
            if not _INT.fullmatch(value):
                raise InvalidMessage(f"header '{key}' is not a decimal integer")
            fields[key] = int(value)
        elif key == "sent_at":
            if not _NUMBER.fullmatch(value):
                raise InvalidMessage("header 'sent_at' is not a decimal number")
            fields[key] = float(value)
        else:
            try:
                fields[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidMessage(f"header '{key}' is not valid UTF-8 text") from None
    return fields


def is_image_record(headers) -> bool:
    """A schema-2 record (it has a ``schema`` header); schema 1 records have no headers."""
    return any(k == "schema" for k, _v in headers or ())


def parse_image_record(value: bytes | None, headers=None, *,
                       max_bytes: int = MAX_IMAGE_MESSAGE_BYTES) -> tuple[dict, bytes]:
    """Validate an image record of either schema; returns (message, image bytes) or raises
    InvalidMessage.  The message holds the metadata fields (schema 1's ``image`` too), the
    image bytes are the PNG or JPEG file (``message["format"]``)."""
    if not is_image_record(headers):
        return parse_image_message(value, max_bytes=max_bytes)
    fields = _header_fields(headers)
    if fields.get("schema") != IMAGE_SCHEMA_V2:
        raise InvalidMessage(f"unknown schema version {fields.get('schema')!r} (expected 1 or 2)")
    if value is None:
        raise InvalidMessage("empty message (null value)")
    if len(value) > max_bytes:
        raise InvalidMessage(f"message is {len(value)} bytes, over the {max_bytes}-byte limit")
    fields.setdefault("label", None)
    try:
        msg = validate(ImageRecordMeta, fields).wire()
    except InvalidMessage as exc:  # the fields are headers here
        raise InvalidMessage(exc.reason.replace("field '", "header '", 1)) from None
    check_image_magic(value, msg["format"])
    return msg, value


# ---------------------------------------------------------------- results

def parse_result_message(raw: bytes | None, *, max_bytes: int = MAX_RESULT_MESSAGE_BYTES) -> dict:
    """Validate a result message; returns the message or raises InvalidMessage."""
    return validate_json(ResultMessage, raw, max_bytes=max_bytes).wire()


def make_result_message(image: dict, *, prediction: str, confidence: float, model: str,
                        received_at: float, inferred_at: float) -> dict:
    """The result for a parsed image message; ``published_at`` is stamped right before
    the send.  Raises InvalidMessage if the result would not pass :func:`parse_result_message`."""
    msg = validate(ResultMessage, {
        "schema": SCHEMA_VERSION,
        "image_id": image["image_id"],
        "device_id": image["device_id"],
        "producer_id": image["producer_id"],
        "seq": image["seq"],
        "sent_at": image["sent_at"],
        "label": image.get("label"),
        "prediction": prediction,
        "confidence": confidence,
        "model": model,
        "received_at": received_at,
        "inferred_at": inferred_at,
        "published_at": _UNSTAMPED,
    }).wire()
    msg["published_at"] = None
    return msg


def dumps(msg: dict) -> bytes:
    """Compact JSON (pydantic-core's serializer: 3-4x the standard library's speed)."""
    return to_json(msg)
