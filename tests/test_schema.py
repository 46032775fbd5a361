"""The wire contract: valid messages parse, every kind of bad input names its reason."""

import base64
import json
import uuid

import numpy as np
import pytest

from common.schema import (InvalidMessage, check_png_header, dumps, encode_png, make_dead_letter,
                           make_image_message, make_result_message, parse_image_message,
                           parse_result_message)


def png(shape=(32, 32, 3)):
    from PIL import Image
    import io

    arr = np.zeros(shape, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_msg(**overrides):
    msg = make_image_message(png=encode_png(np.full((32, 32, 3), 7, np.uint8)), device_id="cam1",
                             producer_id="p1", seq=3, label="cat", dataset="cifar10")
    msg["sent_at"] = 1.5
    msg.update(overrides)
    return msg


def reason_of(raw, **kw):
    with pytest.raises(InvalidMessage) as exc:
        parse_image_message(raw, **kw)
    return exc.value.reason


def test_valid_image_message_round_trips():
    msg = image_msg()
    parsed, raw_png = parse_image_message(dumps(msg))
    assert parsed == msg
    assert raw_png.startswith(b"\x89PNG")
    assert set(msg) == {"schema", "image_id", "device_id", "producer_id", "seq", "sent_at",
                        "label", "dataset", "format", "image"}


@pytest.mark.parametrize("raw, expected", [
    (b"\xff\xfe not json", "invalid JSON"),
    (b"{truncated", "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"null", "not a JSON object"),
])
def test_undecodable_payloads(raw, expected):
    assert expected in reason_of(raw)


def test_none_value_and_oversize():
    assert "null value" in reason_of(None)
    assert "over the 100-byte limit" in reason_of(dumps(image_msg()), max_bytes=100)


@pytest.mark.parametrize("overrides, expected", [
    ({"schema": 2}, "unknown schema version 2"),
    ({"schema": "1"}, "unknown schema version '1'"),
    ({"seq": "3"}, "field 'seq' has the wrong type"),
    ({"seq": True}, "field 'seq' has the wrong type"),
    ({"sent_at": None}, "field 'sent_at' has the wrong type"),
    ({"image_id": "not-a-uuid"}, "not a UUID"),
    ({"format": "jpeg"}, "unsupported image format"),
    ({"image": "!!!not base64!!!"}, "not valid base64"),
    ({"image": ""}, "non-empty base64"),
    ({"image": base64.b64encode(b"GIF89a....").decode()}, "not a PNG"),
    ({"image": base64.b64encode(png((64, 64, 3))).decode()}, "64x64, expected 32x32"),
    ({"image": base64.b64encode(png((32, 32))).decode()}, "not 8-bit RGB"),
    ({"image": base64.b64encode(png((32, 32, 4))).decode()}, "not 8-bit RGB"),
])
def test_bad_fields_have_reasons(overrides, expected):
    assert expected in reason_of(dumps(image_msg(**overrides)))


def test_missing_field():
    msg = image_msg()
    del msg["device_id"]
    assert reason_of(dumps(msg)) == "missing field 'device_id'"


def test_null_label_allowed():
    parsed, _ = parse_image_message(dumps(image_msg(label=None)))
    assert parsed["label"] is None


def test_png_header_check_without_decoding():
    check_png_header(png())
    with pytest.raises(InvalidMessage):
        check_png_header(png()[:20])


def test_result_message_and_dead_letter():
    msg = image_msg()
    result = make_result_message(msg, prediction="dog", confidence=0.25, model="m",
                                 received_at=2.0, inferred_at=2.5)
    result["published_at"] = 2.6
    assert parse_result_message(dumps(result))["prediction"] == "dog"
    bad = dict(result, confidence="high")
    with pytest.raises(InvalidMessage, match="confidence"):
        parse_result_message(dumps(bad))
    dead = make_dead_letter(source_topic="t", partition=1, offset=9, reason="r",
                            payload=b"x" * 5000, limit=100)
    assert dead["payload"] == "x" * 100 and dead["payload_truncated"] and dead["payload_bytes"] == 5000
    assert {"source_topic", "partition", "offset", "reason", "payload", "failed_at"} <= set(dead)
    json.dumps(dead)
    assert make_dead_letter(source_topic="t", partition=0, offset=0, reason="r",
                            payload=None)["payload"] == ""
    uuid.UUID(msg["image_id"])
