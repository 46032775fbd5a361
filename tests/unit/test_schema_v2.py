"""Image schema 2 (the image file as the record value, metadata in headers) and DATASET=folder.

Both schemas parse into the one model (common.models.ImageMeta) and every kind of bad
header or value names its reason, as schema 1 does (tests/unit/test_schema.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from common import dataset as datasets
from common.models import ImageMeta
from common.schema import (InvalidMessage, dumps, encode_png, image_record, make_image_message,
                           make_result_message, parse_image_record)


def jpeg(width=640, height=480, mode="RGB") -> bytes:
    rng = np.random.default_rng(width)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(buf, "JPEG")
    return buf.getvalue()


PNG = encode_png(np.full((32, 32, 3), 7, np.uint8))


def record(image=PNG, fmt="png", **overrides):
    msg = make_image_message(image=image, format=fmt, device_id="cam1", producer_id="p1", seq=3,
                             label="cat", dataset="cifar10", schema=2)
    msg["sent_at"] = 1700000000.123456
    msg.update(overrides)
    return msg, *image_record(msg, image)


def reason(value, headers):
    with pytest.raises(InvalidMessage) as exc:
        parse_image_record(value, headers)
    return exc.value.reason


def replace(headers, name, value):
    return [(k, value if k == name else v) for k, v in headers]


def test_schema_2_round_trips_png_and_jpeg_of_any_size():
    for image, fmt in ((PNG, "png"), (jpeg(), "jpeg"), (encode_png(np.zeros((480, 640, 3), np.uint8)), "png")):
        msg, value, headers = record(image, fmt)
        assert value is image  # the file as it is: no base64, no JSON around it
        parsed, got = parse_image_record(value, headers)
        assert got == image
        assert parsed == {**msg, "schema": 2}
        assert set(parsed) == set(ImageMeta.model_fields) - {"schema_version"} | {"schema"}


def test_both_schemas_give_the_same_fields_and_bytes():
    msg1 = make_image_message(image=PNG, device_id="cam1", producer_id="p1", seq=3, label="cat",
                              dataset="cifar10", image_id="6d1f1e3c-51b8-4d5e-9a43-6d1b6f0f6c01")
    msg1["sent_at"] = 1.5
    v1, png1 = parse_image_record(dumps(msg1), None)
    msg2, value, headers = record(image_id=msg1["image_id"], sent_at=1.5)
    v2, png2 = parse_image_record(*image_record(msg2, PNG))
    assert png1 == png2 == PNG
    assert {k: v for k, v in v1.items() if k not in ("schema", "image")} == \
        {k: v for k, v in v2.items() if k != "schema"}
    # The result of either carries the same fields.
    kw = dict(prediction="cat", confidence=0.5, model="m", received_at=2.0, inferred_at=2.5)
    r1, r2 = make_result_message(v1, **kw), make_result_message(v2, **kw)
    assert r1 == r2


def test_null_label_is_an_absent_header():
    msg, value, headers = record(label=None)
    value, headers = image_record(msg, PNG)
    assert "label" not in dict(headers)
    assert parse_image_record(value, headers)[0]["label"] is None


def test_unknown_headers_are_ignored_a_replay_keeps_parsing():
    _msg, value, headers = record()
    assert parse_image_record(value, headers + [("replay.of", b"iot-dlq:0:5")])[0]["seq"] == 3


@pytest.mark.parametrize("mutate, expected", [
    (lambda h: replace(h, "schema", b"3"), "unknown schema version 3 (expected 1 or 2)"),
    (lambda h: replace(h, "schema", b"two"), "header 'schema' is not a decimal integer"),
    (lambda h: replace(h, "seq", b"1.5"), "header 'seq' is not a decimal integer"),
    (lambda h: replace(h, "seq", b"99999999999999999999"), "header 'seq' is outside the signed 64-bit integer range"),
    (lambda h: replace(h, "sent_at", b"nan"), "header 'sent_at' is not a decimal number"),
    (lambda h: replace(h, "sent_at", b"1e999"), "header 'sent_at' is not a finite number (inf)"),
    (lambda h: replace(h, "device_id", b"\xff\xfe"), "header 'device_id' is not valid UTF-8 text"),
    (lambda h: replace(h, "device_id", b"x" * 257), "header 'device_id' is longer than 256 characters"),
    (lambda h: replace(h, "image_id", b"not-a-uuid"), "header 'image_id' is not a UUID"),
    (lambda h: replace(h, "format", b"gif"), "unsupported image format 'gif' (schema 2 takes png or jpeg)"),
    (lambda h: replace(h, "format", b"jpeg"), "image is not a JPEG"),
    (lambda h: [(k, v) for k, v in h if k != "image_id"], "missing header 'image_id'"),
    (lambda h: h + [("seq", b"4")], "header 'seq' appears more than once"),
])
def test_bad_headers_have_reasons(mutate, expected):
    _msg, value, headers = record()
    assert reason(value, mutate(headers)) == expected


def test_bad_values_have_reasons():
    _msg, value, headers = record()
    assert reason(None, headers) == "empty message (null value)"
    assert reason(b"GIF89a" + bytes(40), headers) == "image is not a PNG"
    with pytest.raises(InvalidMessage, match="over the 100-byte limit"):
        parse_image_record(value, headers, max_bytes=100)


def test_schema_1_messages_are_still_read_and_checked_as_before():
    msg = make_image_message(image=PNG, device_id="cam1", producer_id="p1", seq=3, label="cat", dataset="cifar10")
    msg["sent_at"] = 1.5
    parsed, png = parse_image_record(dumps(msg), [])
    assert parsed["schema"] == 1 and png == PNG
    with pytest.raises(InvalidMessage, match="expected 32x32"):  # schema 1 stays a 32x32 PNG
        make_image_message(image=encode_png(np.zeros((64, 64, 3), np.uint8)), device_id="c", producer_id="p",
                           seq=0, label=None, dataset="x")


def test_building_a_record_refuses_what_consumers_would_refuse():
    with pytest.raises(InvalidMessage, match="not a JPEG"):
        make_image_message(image=PNG, format="jpeg", device_id="c", producer_id="p", seq=0, label=None,
                           dataset="x", schema=2)
    with pytest.raises(InvalidMessage, match="unknown schema version 3"):
        make_image_message(image=PNG, device_id="c", producer_id="p", seq=0, label=None, dataset="x", schema=3)


# ------------------------------------------------------------------ DATASET=folder

def test_folder_dataset_reads_files_as_they_are_with_labels_from_sub_folders(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    big = jpeg(640, 480)
    (tmp_path / "cat" / "a.jpg").write_bytes(big)
    (tmp_path / "dog" / "b.PNG").write_bytes(PNG)
    (tmp_path / "top.jpeg").write_bytes(jpeg(100, 50, "L"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_text("not a jpeg either")
    ds = datasets.load("folder", str(tmp_path))
    assert len(ds) == 3
    assert ds.labels == ["cat", "dog", None]
    assert ds.encoded(0) == (big, "jpeg")
    assert ds.encoded(1) == (PNG, "png")
    # Over the message size limit: skipped with a warning, not sent to be refused later.
    assert len(datasets.load("folder", str(tmp_path), max_bytes=len(big) - 1)) == 2


def test_folder_dataset_says_what_is_wrong(tmp_path):
    with pytest.raises(datasets.DatasetUnavailable, match="needs DATASET_SOURCE"):
        datasets.load("folder", "")
    with pytest.raises(datasets.DatasetUnavailable, match="is not a directory"):
        datasets.load("folder", str(tmp_path / "nope"))
    (tmp_path / "x.jpg").write_text("text")
    with pytest.raises(datasets.DatasetUnavailable, match="no usable .*1 skipped: x.jpg: not a PNG or JPEG"):
        datasets.load("folder", str(tmp_path))
