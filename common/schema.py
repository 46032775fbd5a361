"""The wire contract: image and result messages (see docs/ARCHITECTURE.md; dead letters are
:mod:`common.deadletter`).

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
import json
import uuid

from common.models import (IMAGE_SIZE, MAX_IMAGE_MESSAGE_BYTES, MAX_RESULT_MESSAGE_BYTES, MAX_TEXT_CHARS,
                           SCHEMA_VERSION, ImageMessage, InvalidMessage, ResultMessage,
                           check_png_header, decode_image_b64, validate, validate_json)

__all__ = ["IMAGE_SIZE", "MAX_TEXT_CHARS", "SCHEMA_VERSION", "InvalidMessage", "check_png_header",
           "decode_image_b64", "dumps", "encode_png", "make_image_message",
           "make_result_message", "parse_image_message", "parse_result_message"]

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
                       label: str | None, dataset: str, image_id: str | None = None) -> dict:
    """A new image message; ``sent_at`` is stamped by the producer right before sending.

    Raises InvalidMessage if the message would not pass :func:`parse_image_message`."""
    msg = validate(ImageMessage, {
        "schema": SCHEMA_VERSION,
        "image_id": image_id or str(uuid.uuid4()),
        "device_id": device_id,
        "producer_id": producer_id,
        "seq": seq,
        "sent_at": _UNSTAMPED,
        "label": label,
        "dataset": dataset,
        "format": "png",
        "image": base64.b64encode(png).decode("ascii"),
    }).wire()
    msg["sent_at"] = None
    return msg


def parse_image_message(raw: bytes | None, *,
                        max_bytes: int = MAX_IMAGE_MESSAGE_BYTES) -> tuple[dict, bytes]:
    """Validate an image message; returns (message, png bytes) or raises InvalidMessage."""
    msg = validate_json(ImageMessage, raw, max_bytes=max_bytes)
    return msg.wire(), msg.png


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
    return json.dumps(msg, separators=(",", ":")).encode()
