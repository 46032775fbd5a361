"""The wire contract: image, result and dead-letter messages (see docs/ARCHITECTURE.md).

Every message carries ``schema``; consumers reject versions they do not know
with a reason instead of guessing.  Validation here is cheap on purpose: the PNG
header is checked (signature, 32x32, 8-bit RGB) without decoding the pixels, so
the inference consumer does not decode an image the service will decode again.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import time
import uuid
from typing import Any

SCHEMA_VERSION = 1
IMAGE_SIZE = 32  # CIFAR images are 32x32 RGB
# Text fields are copied into the result message: unbounded, a valid image could
# yield a result too big for the DB consumer (found by tests/test_hostile.py).
MAX_TEXT_CHARS = 256

IMAGE_FIELDS = ("schema", "image_id", "device_id", "producer_id", "seq", "sent_at",
                "label", "dataset", "format", "image")
RESULT_FIELDS = ("schema", "image_id", "device_id", "producer_id", "seq", "sent_at",
                 "prediction", "confidence", "model", "received_at", "inferred_at",
                 "published_at")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_RGB = 2  # IHDR colour type for truecolour without alpha


class InvalidMessage(ValueError):
    """A message that can never be processed; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- images

def encode_png(pixels) -> bytes:
    """uint8 HxWx3 array -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def check_png_header(png: bytes, size: int = IMAGE_SIZE) -> None:
    """Raise InvalidMessage unless ``png`` starts like a size x size 8-bit RGB PNG."""
    if len(png) < 33 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise InvalidMessage("image is not a PNG")
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    if (width, height) != (size, size):
        raise InvalidMessage(f"image is {width}x{height}, expected {size}x{size}")
    if depth != 8 or colour != _PNG_RGB:
        raise InvalidMessage(f"image is not 8-bit RGB (bit depth {depth}, colour type {colour})")


def decode_image_b64(text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise InvalidMessage("field 'image' must be a non-empty base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage("field 'image' is not valid base64") from None


def make_image_message(*, png: bytes, device_id: str, producer_id: str, seq: int,
                       label: str | None, dataset: str, image_id: str | None = None) -> dict:
    """A new image message; ``sent_at`` is stamped by the producer right before sending."""
    return {
        "schema": SCHEMA_VERSION,
        "image_id": image_id or str(uuid.uuid4()),
        "device_id": device_id,
        "producer_id": producer_id,
        "seq": seq,
        "sent_at": None,
        "label": label,
        "dataset": dataset,
        "format": "png",
        "image": base64.b64encode(png).decode("ascii"),
    }


def _loads(raw: bytes, max_bytes: int) -> dict:
    if raw is None:
        raise InvalidMessage("empty message (null value)")
    if len(raw) > max_bytes:
        raise InvalidMessage(f"message is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage(f"invalid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise InvalidMessage("message is not a JSON object")
    # type() is int: JSON true and 1.0 compare equal to 1 but are not schema 1.
    if type(msg.get("schema")) is not int or msg["schema"] != SCHEMA_VERSION:
        raise InvalidMessage(f"unknown schema version {msg.get('schema')!r} (expected {SCHEMA_VERSION})")
    return msg


def _require(msg: dict, name: str, types: tuple, *, nullable: bool = False) -> None:
    if name not in msg:
        raise InvalidMessage(f"missing field '{name}'")
    value = msg[name]
    if value is None and nullable:
        return
    # bool is an int subclass; a seq of true is a bug, not a number.
    if isinstance(value, bool) or not isinstance(value, types):
        raise InvalidMessage(f"field '{name}' has the wrong type ({type(value).__name__})")


def _check_id(msg: dict) -> None:
    try:
        uuid.UUID(msg["image_id"])
    except ValueError:
        raise InvalidMessage("field 'image_id' is not a UUID") from None


def parse_image_message(raw: bytes, *, max_bytes: int = 256 * 1024) -> tuple[dict, bytes]:
    """Validate an image message; returns (message, png bytes) or raises InvalidMessage."""
    msg = _loads(raw, max_bytes)
    for name in ("image_id", "device_id", "producer_id", "dataset", "format", "image"):
        _require(msg, name, (str,))
    _require(msg, "seq", (int,))
    _require(msg, "sent_at", (int, float))
    _require(msg, "label", (str,), nullable=True)
    _check_id(msg)
    for name in ("device_id", "producer_id", "dataset", "label"):
        if isinstance(msg[name], str) and len(msg[name]) > MAX_TEXT_CHARS:
            raise InvalidMessage(f"field '{name}' is longer than {MAX_TEXT_CHARS} characters")
    if msg["format"] != "png":
        raise InvalidMessage(f"unsupported image format {msg['format']!r}")
    png = decode_image_b64(msg["image"])
    check_png_header(png)
    return msg, png


def parse_result_message(raw: bytes, *, max_bytes: int = 64 * 1024) -> dict:
    msg = _loads(raw, max_bytes)
    for name in ("image_id", "device_id", "producer_id", "prediction", "model"):
        _require(msg, name, (str,))
    _require(msg, "seq", (int,))
    for name in ("sent_at", "confidence", "received_at", "inferred_at"):
        _require(msg, name, (int, float))
    _check_id(msg)
    return msg


def make_result_message(image: dict, *, prediction: str, confidence: float, model: str,
                        received_at: float, inferred_at: float) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "image_id": image["image_id"],
        "device_id": image["device_id"],
        "producer_id": image["producer_id"],
        "seq": image["seq"],
        "sent_at": image["sent_at"],
        "label": image.get("label"),
        "prediction": prediction,
        "confidence": float(confidence),
        "model": model,
        "received_at": received_at,
        "inferred_at": inferred_at,
        "published_at": None,  # stamped right before the send
    }


def make_dead_letter(*, source_topic: str, partition: int, offset: int, reason: str,
                     payload: bytes | None, limit: int = 4096) -> dict:
    """Dead-letter record; the payload is kept (truncated) for whoever investigates."""
    text = "" if payload is None else payload[:limit].decode("utf-8", errors="replace")
    return {
        "schema": SCHEMA_VERSION,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "reason": reason,
        "payload": text,
        "payload_bytes": 0 if payload is None else len(payload),
        "payload_truncated": payload is not None and len(payload) > limit,
        "failed_at": time.time(),
    }


def dumps(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()
