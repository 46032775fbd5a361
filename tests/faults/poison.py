"""A deterministic corpus of hostile inputs, by class, for the hostile flood
(tests/faults/test_hostile_flood.py).

Every class of input that ever stopped a consumer or a worker is here explicitly
(surrogates in each text field, deep nesting, int64 edges, non-finite numbers,
``$``/``.`` keys, wrong types, truncated JSON, raw bytes, non-PNG images, wrong
sizes/modes, unknown schemas, null values), and each is varied with a seed so that
every input is distinct (counted by its bytes).

What is hostile to one store rather than to the contract (:func:`store_image_poisons`,
:func:`store_result_poisons`): NUL bytes and invalid UTF-8 in text fields (PostgreSQL's
text refuses NUL), ``_``-prefixed and huge field names (CouchDB reserves ``_`` members:
``_deleted`` would delete a document), ids that are not valid document ids (``_design/...``,
empty).  Each must be dead-lettered with a reason, or stored intact, on every store.
"""

from __future__ import annotations

import json
import random
import uuid

from tests.hostile import b64, png_bytes, valid_message

TEXT_FIELDS = ("device_id", "producer_id", "label", "dataset", "image_id")
NUMBER_FIELDS = ("seq", "sent_at")
INT64_EDGES = (2**63, -2**63 - 1, 2**64, 10**30, -(10**30))
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")
WRONG_TYPES = (True, False, None, [], {}, "12", 1.5, [1, 2], {"$gt": 1})


# CouchDB's own document members and other "_" names, and ids CouchDB would refuse or
# store as something else than a document.
UNDERSCORE_KEYS = ("_id", "_rev", "_deleted", "_attachments", "_conflicts", "_revisions", "_local_seq", "_foo", "_",
                   "__proto__")
BAD_DOCUMENT_IDS = ("", " ", "_design/iot", "_local/x", "_bad", "_all_docs", "a/b", "\u0000", "x" * 300, "..",
                    "00000000-0000-0000-0000-00000000000g")
STORE_TEXT_FIELDS = ("device_id", "label", "dataset")


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _with_raw(msg: dict, field: str, raw_json: str) -> bytes:
    """``msg`` as JSON with ``field``'s value replaced by a raw JSON token (NaN, 1e999, ...)."""
    marker = f"__raw_{uuid.uuid4().hex}__"
    return _dumps({**msg, field: marker}).replace(f'"{marker}"'.encode(), raw_json.encode())


def image_poisons(tag: str, rng: random.Random):
    """Endless (class, value bytes or None) poison messages for the images topic."""
    classes = []

    def add(name):
        def deco(fn):
            classes.append((name, fn))
            return fn
        return deco

    @add("lone surrogate in a text field")
    def _(m):
        field = rng.choice(TEXT_FIELDS)
        return _dumps({**m, field: "SUR"}).replace(
            b'"SUR"', f'"a\\ud{rng.randrange(0x800, 0xc00):03x}{rng.randrange(10**6)}"'.encode(), 1)

    @add("deep nesting")
    def _(m):
        depth = rng.randrange(300, 20000)
        return b"[" * depth + b"]" * rng.choice([0, depth])

    @add("nested object in a field")
    def _(m):
        depth = rng.randrange(250, 3000)
        return _dumps({**m, rng.choice(TEXT_FIELDS + NUMBER_FIELDS): "NEST"}).replace(
            b'"NEST"', b'{"a":' * depth + b"1" + b"}" * depth)

    @add("integer outside int64")
    def _(m):
        edge = rng.choice(INT64_EDGES)
        return _with_raw(m, rng.choice(NUMBER_FIELDS), str(edge + rng.randrange(1000) * (1 if edge > 0 else -1)))

    @add("non-finite number")
    def _(m):
        return _with_raw(m, rng.choice(NUMBER_FIELDS), rng.choice(NON_FINITE))

    @add("$ or . key")
    def _(m):
        key = rng.choice(["$set", "$where", "a.b", "$", ".x", "$" * rng.randrange(1, 9)])
        return _dumps({**m, key: rng.choice([1, "x", {"$gt": 1}])}) if rng.random() < 0.3 else \
            _dumps({**m, rng.choice(TEXT_FIELDS): {key: 1}})

    @add("wrong type")
    def _(m):
        return _dumps({**m, rng.choice(TEXT_FIELDS + NUMBER_FIELDS + ("schema", "image")): rng.choice(WRONG_TYPES)})

    @add("missing field")
    def _(m):
        field = rng.choice(list(m))
        return _dumps({k: v for k, v in m.items() if k != field})

    @add("truncated JSON")
    def _(m):
        raw = _dumps(m)
        return raw[:rng.randrange(1, len(raw) - 1)]

    @add("raw bytes")
    def _(m):
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))

    @add("not UTF-8")
    def _(m):
        return _dumps(m).replace(b'"synthetic"', b'"\xff\xfe' + bytes([rng.randrange(128, 256)]) + b'"')

    @add("base64 of something else")
    def _(m):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        return _dumps({**m, "image": rng.choice([b64(junk), "!!not base64!!", "A" * rng.randrange(1, 99)])})

    @add("wrong image")
    def _(m):
        size = rng.choice([(16, 16), (33, 32), (1, 1), (64, 64)])
        mode = rng.choice(["RGB", "L", "RGBA"])
        fmt = rng.choice(["PNG", "JPEG", "GIF"])
        if (size, mode, fmt) == ((32, 32), "RGB", "PNG"):
            size = (31, 32)
        try:
            img = png_bytes(*size, mode=mode, seed=rng.randrange(1 << 30), fmt=fmt)
        except OSError:  # JPEG cannot hold RGBA
            img = png_bytes(*size, mode="RGB", seed=rng.randrange(1 << 30), fmt=fmt)
        return _dumps({**m, "image": b64(img)})

    @add("unknown schema")
    def _(m):
        return _dumps({**m, "schema": rng.choice([0, 2, 99, -1, "1", 1.0, True, None])})

    @add("huge string")
    def _(m):
        return _dumps({**m, rng.choice(TEXT_FIELDS): "x" * rng.randrange(300, 50000)})

    @add("not an object")
    def _(m):
        return _dumps(rng.choice([[m], "x", 1, None, True, [], m["image_id"]]))

    @add("null or empty value")
    def _(m):
        return rng.choice([None, b"", b" ", b"{}", b"null"])

    i = 0
    while True:
        name, fn = classes[i % len(classes)]
        i += 1
        yield name, fn(valid_message(tag, 10**6 + i, seed=rng.randrange(1 << 30)))


def result_poisons(tag: str, rng: random.Random, image_id: str):
    """Endless (class, value) poison messages for the results topic about ``image_id``."""
    base = {"schema": 1, "image_id": image_id, "device_id": f"{tag}-cam", "producer_id": tag, "seq": 1,
            "sent_at": 1.0, "label": None, "prediction": "cat", "confidence": 0.5, "model": "m",
            "received_at": 1.0, "inferred_at": 1.0, "published_at": 1.0}
    fields = [k for k in base if k != "schema"]
    makers = [
        ("wrong type", lambda: _dumps({**base, rng.choice(fields): rng.choice(WRONG_TYPES)})),
        ("$ key object", lambda: _dumps({**base, rng.choice(["published_at", "prediction", "model"]):
                                         {rng.choice(["$set", "$inc", "a.b"]): rng.randrange(9)}})),
        ("integer outside int64", lambda: _with_raw(base, rng.choice(["seq", "sent_at", "published_at"]),
                                                    str(rng.choice(INT64_EDGES)))),
        ("non-finite number", lambda: _with_raw(base, rng.choice(["confidence", "inferred_at", "sent_at"]),
                                                rng.choice(NON_FINITE))),
        ("lone surrogate", lambda: _dumps({**base, "model": "m"}).replace(
            b'"m"', f'"\\ud{rng.randrange(800, 0xbff + 1):03x}{rng.randrange(10**6)}"'.encode(), 1)),
        ("deep nesting", lambda: b'{"x":' * rng.randrange(300, 5000) + b"1"),
        ("truncated JSON", lambda: _dumps(base)[:rng.randrange(1, 150)]),
        ("raw bytes", lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))),
        ("missing field", lambda: _dumps({k: v for k, v in base.items() if k != rng.choice(fields)})),
        ("huge string", lambda: _dumps({**base, "model": "m" * rng.randrange(300, 20000)})),
    ]
    i = 0
    while True:
        name, make = makers[i % len(makers)]
        i += 1
        yield name, make()


def api_poisons(rng: random.Random):
    """Endless (class, request body bytes) hostile /v1/predict bodies."""
    good = lambda: {"image_id": str(uuid.UUID(int=rng.getrandbits(128))),  # noqa: E731
                    "image": b64(png_bytes(seed=rng.randrange(1 << 30)))}
    makers = [
        ("wrong type instances", lambda: _dumps({"instances": rng.choice(WRONG_TYPES)})),
        ("wrong type image", lambda: _dumps({"instances": [{**good(), "image": rng.choice(WRONG_TYPES)}]})),
        ("lone surrogate", lambda: _dumps({"instances": [{**good(), "image_id": "sur"}]}).replace(
            b'"sur"', f'"\\ud{rng.randrange(800, 0xbff + 1):03x}{rng.randrange(10**6)}"'.encode())),
        ("deep nesting", lambda: b'{"instances":' + b"[" * rng.randrange(300, 20000) + b"]"),
        ("non-finite number", lambda: _with_raw({"instances": [good()], "x": 0}, "x", rng.choice(NON_FINITE))),
        ("integer outside int64", lambda: _with_raw({"instances": [good()], "x": 0}, "x",
                                                    str(rng.choice(INT64_EDGES)))),
        ("base64 of something else", lambda: _dumps({"instances": [{**good(), "image": b64(
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))}]})),
        ("wrong image", lambda: _dumps({"instances": [{**good(), "image": b64(png_bytes(
            rng.choice([8, 16, 31]), 32, seed=rng.randrange(1 << 30)))}]})),
        ("too many instances", lambda: _dumps({"instances": [good()] * rng.randrange(129, 140)})),
        ("empty instances", lambda: _dumps({"instances": [{}] * rng.randrange(1, 100)})),
        ("truncated JSON", lambda: _dumps({"instances": [good()]})[:rng.randrange(1, 60)]),
        ("raw bytes", lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500)))),
        ("image too long", lambda: _dumps({"instances": [{**good(), "image": "A" * rng.randrange(8200, 20000)}]})),
        ("$ key", lambda: _dumps({"instances": [{**good(), "$where": rng.randrange(9)}], "$set": {"a": 1}})),
        ("mixed valid and invalid", lambda: _dumps({"instances": [good(), {"image_id": "x", "image": "!"},
                                                                  good()]})),
    ]
    i = 0
    while True:
        name, make = makers[i % len(makers)]
        i += 1
        yield name, make()



def _with_nul(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + "\x00" * rng.randrange(1, 4) + text[at:]


def _underscore_value(rng: random.Random, image_id: str):
    return rng.choice([True, 1, "x", None, {"image": {"data": "aGk=", "content_type": "text/plain"}}, image_id,
                       "1-" + uuid.UUID(int=rng.getrandbits(128)).hex, [1]])


def store_image_poisons(tag: str, rng: random.Random):
    """Endless (class, value, headers or None) images for the images topic that are hostile
    to a store: JSON messages (schema 1) and header records (schema 2)."""
    from common.schema import image_record

    def schema2(m: dict, edit) -> tuple[bytes, list]:
        m = {**m, "schema": 2}
        value, headers = image_record(m, png_bytes(seed=rng.randrange(1 << 30)))
        return value, edit(headers)

    def header(name: str, raw: bytes):
        return lambda headers: [(k, raw if k == name else v) for k, v in headers] + (
            [] if any(k == name for k, _ in headers) else [(name, raw)])

    makers = [
        ("NUL byte in a text field", lambda m: (_dumps({**m, (f := rng.choice(STORE_TEXT_FIELDS)):
                                                          _with_nul(rng, m[f] or "cat")}), None)),
        ("NUL byte in a header", lambda m: schema2(m, header(rng.choice(STORE_TEXT_FIELDS),
                                                             _with_nul(rng, "cam").encode()))),
        ("invalid UTF-8 in a header", lambda m: schema2(m, header(rng.choice(STORE_TEXT_FIELDS), b"c\xff\xfe" +
                                                                  bytes([rng.randrange(128, 256)])))),
        ("invalid UTF-8 in a text field", lambda m: (_dumps({**m, rng.choice(STORE_TEXT_FIELDS): "BAD"}).replace(
            b'"BAD"', b'"c' + bytes([rng.randrange(0x80, 0x100)]) + b'\xfe"'), None)),
        ("_-prefixed field", lambda m: (_dumps({**m, rng.choice(UNDERSCORE_KEYS): _underscore_value(
            rng, m["image_id"]), f"_{rng.randrange(10**6)}": 1}), None)),
        ("_-prefixed header", lambda m: schema2(m, lambda h: h + [(rng.choice(UNDERSCORE_KEYS), b"true")])),
        ("huge field name", lambda m: (_dumps({**m, "k" * rng.randrange(1000, 300_000): 1}), None)),
        ("not a document id", lambda m: (_dumps({**m, "image_id": rng.choice(BAD_DOCUMENT_IDS) + (
            "" if rng.random() < 0.5 else str(rng.randrange(10**6)))}), None)),
        ("not a document id in a header", lambda m: schema2(m, header("image_id", rng.choice(
            BAD_DOCUMENT_IDS).encode() + str(rng.randrange(10**6)).encode()))),
    ]
    i = 0
    while True:
        name, make = makers[i % len(makers)]
        i += 1
        value, headers = make(valid_message(tag, 2 * 10**6 + i, seed=rng.randrange(1 << 30)))
        yield name, value, headers


def store_result_poisons(tag: str, rng: random.Random, image_id: str):
    """Endless (class, value) results hostile to a store, about ``image_id`` (but for the
    class that replaces it)."""
    base = {"schema": 1, "image_id": image_id, "device_id": f"{tag}-cam", "producer_id": tag, "seq": 1,
            "sent_at": 1.0, "label": None, "prediction": "cat", "confidence": 0.5, "model": "m",
            "received_at": 1.0, "inferred_at": 1.0, "published_at": 1.0}
    makers = [
        ("NUL byte in a text field", lambda: _dumps({**base, (f := rng.choice(["prediction", "model", "device_id"])):
                                                     _with_nul(rng, base[f])})),
        ("invalid UTF-8 in a text field", lambda: _dumps({**base, "model": "BAD"}).replace(
            b'"BAD"', b'"m' + bytes([rng.randrange(0x80, 0x100)]) + b'"')),
        ("_-prefixed field", lambda: _dumps({**base, rng.choice(UNDERSCORE_KEYS): _underscore_value(rng, image_id),
                                             f"_{rng.randrange(10**6)}": 1})),
        ("huge field name", lambda: _dumps({**base, "k" * rng.randrange(1000, 60_000): 1})),
        ("not a document id", lambda: _dumps({**base, "image_id": rng.choice(BAD_DOCUMENT_IDS) + str(
            rng.randrange(10**6))})),
    ]
    i = 0
    while True:
        name, make = makers[i % len(makers)]
        i += 1
        yield name, make()
