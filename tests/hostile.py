"""Hypothesis strategies for hostile input: what a broken or malicious camera could send.

Shared by tests/integration/test_hostile.py (the images topic, through the real stack) and
tests/integration/test_hostile_http.py (the inference API).  Every strategy draws *bytes* (or a
JSON-able object for the HTTP body), so a test can send it as is.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid

import numpy as np
from hypothesis import strategies as st

from common.models import ImageMessage
from common.schema import dumps, encode_png, image_record, make_image_message

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=40))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=10)
FIELDS = ImageMessage.wire_fields()
# JSON values no well-behaved producer writes, each a rejection of the contract: lone surrogates
# (they crash str.encode and BSON later), non-finite numbers, integers beyond int64 (BSON's
# largest), nesting deeper than any parser's recursion, a bool where a number belongs.
RAW_VALUES = (b'"\\ud800"', b'"cam\\udfff"', b'"\\udc00\\ud800"', b"NaN", b"-Infinity", b"1e999",
              b"9223372036854775808", b"-9223372036854775809", b"[" * 50_000, b'{"a":' * 20_000,
              b"true")


def png_bytes(width: int = 32, height: int = 32, mode: str = "RGB", seed: int = 0,
              fmt: str = "PNG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def valid_message(tag: str, seq: int = 0, *, seed: int | None = None, image_id: str | None = None,
                  device: str | None = None) -> dict:
    pixels = np.random.default_rng(seq if seed is None else seed).integers(0, 256, (32, 32, 3),
                                                                           dtype=np.uint8)
    msg = make_image_message(image=encode_png(pixels), device_id=device or f"{tag}-cam",
                             producer_id=tag, seq=seq, label=None, dataset="synthetic",
                             image_id=image_id)
    msg["sent_at"] = time.time()
    return msg


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ image payloads

wrong_images = st.one_of(
    # wrong size and/or mode (32x32 RGB sneaks in now and then: it is valid)
    st.builds(png_bytes, st.integers(1, 48), st.integers(1, 48),
              st.sampled_from(["RGB", "L", "LA", "P", "RGBA", "1", "I;16"]), st.integers(0, 9)),
    # other formats labelled png
    st.builds(png_bytes, st.just(32), st.just(32), st.just("RGB"), st.integers(0, 9),
              st.sampled_from(["JPEG", "GIF", "BMP", "TIFF"])),
    # arbitrary bytes, and a PNG signature followed by garbage
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    # a valid 32x32 RGB header whose pixel data is corrupt or cut short
    st.tuples(st.integers(0, 9), st.integers(40, 2000), st.binary(min_size=1, max_size=64)).map(
        lambda t: (lambda p: p[:min(t[1], len(p) - 1)] + t[2])(png_bytes(seed=t[0]))),
)


def _replace_field(tag: str):
    return st.tuples(st.integers(0, 10**6), st.sampled_from(FIELDS), JSON_VALUES).map(
        lambda t: dumps({**valid_message(tag, t[0]), t[1]: t[2]}))


def _drop_field(tag: str):
    return st.tuples(st.integers(0, 10**6), st.sampled_from(FIELDS)).map(
        lambda t: dumps({k: v for k, v in valid_message(tag, t[0]).items() if k != t[1]}))


def _truncated(tag: str):
    return st.tuples(st.integers(0, 10**6), st.floats(0, 0.999)).map(
        lambda t: (lambda raw: raw[:int(len(raw) * t[1])])(dumps(valid_message(tag, t[0]))))


def _huge(tag: str):
    return st.tuples(st.integers(0, 10**6), st.sampled_from(["device_id", "producer_id", "label",
                                                              "dataset", "image", "extra"]),
                     st.integers(1_000, 400_000)).map(
        lambda t: dumps({**valid_message(tag, t[0]), t[1]: "A" * t[2]}))


def with_raw_field(msg: dict, name: str, raw: bytes) -> bytes:
    """``msg`` as JSON with the value of ``name`` replaced by the JSON text ``raw``."""
    return dumps({**msg, name: "\0RAW\0"}).replace(b'"\\u0000RAW\\u0000"', raw)


def _raw_field(tag: str):
    return st.tuples(st.integers(0, 10**6), st.sampled_from(FIELDS), st.sampled_from(RAW_VALUES)).map(
        lambda t: with_raw_field(valid_message(tag, t[0]), t[1], t[2]))


def _image_payload(tag: str):
    return st.tuples(st.integers(0, 10**6), wrong_images).map(
        lambda t: dumps({**valid_message(tag, t[0]), "image": b64(t[1])}))


def _schema(tag: str):
    return st.tuples(st.integers(0, 10**6), JSON_VALUES.filter(lambda v: v != 1 or v is True)).map(
        lambda t: dumps({**valid_message(tag, t[0]), "schema": t[1]}))


def _not_an_object(tag: str):
    return JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: json.dumps(v).encode())


def hostile_messages(tag: str) -> st.SearchStrategy[bytes | None]:
    """One message value for the images topic; ``None`` is a null value (tombstone)."""
    return st.one_of(
        st.binary(max_size=2000),
        st.just(None), st.just(b""),
        _not_an_object(tag),
        _truncated(tag),
        _replace_field(tag),
        _drop_field(tag),
        _huge(tag),
        _image_payload(tag),
        _schema(tag),
        _raw_field(tag),
        st.sampled_from([b"[" * 50_000, b'{"schema":1,"x":' + b"[" * 50_000]),
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    )


def new_tag() -> str:
    return "h" + uuid.uuid4().hex[:8]


# ------------------------------------------------------------------ schema 2: headers + file

V2_HEADERS = ("schema", "image_id", "device_id", "producer_id", "seq", "sent_at", "label", "dataset", "format")
HEADER_VALUES = st.one_of(
    st.binary(max_size=40), st.none(),
    st.sampled_from([b"2", b"1", b"-1", b"02", b"2.0", b"nan", b"inf", b"1e999", b"99999999999999999999",
                     b"\xff\xfe", b"\xed\xa0\x80", b"", b"png", b"jpeg", b"gif", b"A" * 300]),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")))


def valid_record(tag: str, seq: int = 0, image: bytes | None = None, fmt: str = "png"):
    """``(value, headers)`` of a valid schema-2 record."""
    image = image if image is not None else encode_png(
        np.random.default_rng(seq).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    msg = make_image_message(image=image, format=fmt, device_id=f"{tag}-cam", producer_id=tag, seq=seq,
                             label=None, dataset="synthetic", schema=2)
    msg["sent_at"] = time.time()
    return image_record(msg, image)


def _v2_header_edit(tag: str):
    """A valid record with one header replaced, dropped or repeated."""
    def edit(t):
        seq, name, value, how = t
        image, headers = valid_record(tag, seq)
        if how == "drop":
            headers = [(k, v) for k, v in headers if k != name]
        elif how == "repeat":
            headers = headers + [(name, value)]
        else:
            headers = [(k, value if k == name else v) for k, v in headers]
            if name not in dict(headers):
                headers.append((name, value))
        return image, headers
    return st.tuples(st.integers(0, 10**6), st.sampled_from(V2_HEADERS), HEADER_VALUES,
                     st.sampled_from(["replace", "drop", "repeat"])).map(edit)


def _v2_image_edit(tag: str):
    """Valid headers around a wrong image: any of the wrong images, either format claimed."""
    def edit(t):
        seq, image, fmt = t
        _img, headers = valid_record(tag, seq)
        return image, [(k, fmt if k == "format" else v) for k, v in headers]
    return st.tuples(st.integers(0, 10**6), st.one_of(wrong_images, st.none()),
                     st.sampled_from([b"png", b"jpeg"])).map(edit)


def hostile_records(tag: str) -> st.SearchStrategy[tuple[bytes | None, list]]:
    """``(value, headers)`` of one schema-2 record for the images topic."""
    return st.one_of(_v2_header_edit(tag), _v2_image_edit(tag),
                     st.tuples(st.binary(max_size=300),
                               st.lists(st.tuples(st.sampled_from(V2_HEADERS), HEADER_VALUES), max_size=12)))
