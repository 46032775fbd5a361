"""Hostile input on the images topic (hypothesis).

Unit level: the validators never raise anything but InvalidMessage, whatever they
are fed.  Through the real stack: arbitrary bytes, truncated JSON, wrong types,
huge strings, base64 of non-images, images of the wrong size or mode, unknown
schema versions, duplicate image ids with different content: every message ends in
``iot-dlq`` with a reason or, if valid, in MongoDB with a prediction; the consumers
never die; valid messages after them are processed.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.deadletter import DeadLetter, read_dead_letter
from common.models import check_image_magic
from common.schema import (InvalidMessage, check_png_header, dumps, make_result_message, parse_image_record,
                           parse_image_message, parse_result_message)
from tests.support import HANG_GUARD_S, eventually
from tests.hostile import (JSON_VALUES, hostile_messages, hostile_records, new_tag, valid_record, png_bytes, valid_message,
                           wrong_images)

UNIT = settings(max_examples=300, deadline=None)


# ------------------------------------------------------------------ unit level

def _only_invalid_message(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except InvalidMessage as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return None


@UNIT
@given(hostile_messages("unit"))
def test_parse_image_message_raises_only_invalid_message(raw):
    result = _only_invalid_message(parse_image_message, raw)
    if result is not None:  # accepted: then it really is a valid 32x32 RGB PNG message
        msg, png = result
        check_png_header(png)
        assert msg["schema"] == 1 and type(msg["schema"]) is int
        # ... and its result is one the DB consumer accepts (no valid image may end half-written)
        result = make_result_message(msg, prediction="cat", confidence=0.5, model="m" * 64,
                                     received_at=1.0, inferred_at=1.0)
        result["published_at"] = 1.0
        parse_result_message(dumps(result))


@UNIT
@given(hostile_records("unit"))
def test_parse_image_record_raises_only_invalid_message(record):
    value, headers = record
    result = _only_invalid_message(parse_image_record, value, headers)
    if result is not None:  # accepted: then its fields are valid and the bytes look like the format
        msg, image = result
        assert msg["schema"] == 2 and msg["format"] in ("png", "jpeg") and image is value
        check_image_magic(image, msg["format"])
        result = make_result_message(msg, prediction="cat", confidence=0.5, model="m" * 64,
                                     received_at=1.0, inferred_at=1.0)
        result["published_at"] = 1.0
        parse_result_message(dumps(result))


@UNIT
@given(st.binary(max_size=4000))
def test_parse_result_message_raises_only_invalid_message(raw):
    _only_invalid_message(parse_result_message, raw)


@UNIT
@given(st.sampled_from(["prediction", "confidence", "seq", "image_id", "model", "sent_at",
                        "schema", "received_at"]), JSON_VALUES)
def test_result_with_any_field_value(name, value):
    msg = {"schema": 1, "image_id": "0b6f9a3e-1c1d-4c1e-9d7e-3f0b8a1b2c3d", "device_id": "d",
           "producer_id": "p", "seq": 1, "sent_at": 1.0, "prediction": "cat", "confidence": 0.5,
           "model": "m", "received_at": 1.0, "inferred_at": 1.0, "published_at": 1.0}
    _only_invalid_message(parse_result_message, dumps({**msg, name: value}))


@UNIT
@given(wrong_images)
def test_png_header_check_raises_only_invalid_message(png):
    _only_invalid_message(check_png_header, png)


@pytest.mark.parametrize("schema", [True, 1.0, "1", [1], 2, 0, None])
def test_schema_version_must_be_the_integer_1(schema):
    with pytest.raises(InvalidMessage, match="unknown schema version"):
        parse_image_message(dumps({**valid_message("u"), "schema": schema}))


def test_wrong_mode_and_size_are_rejected_with_a_reason():
    for png, text in [(png_bytes(16, 16), "16x16"), (png_bytes(mode="L"), "not 8-bit RGB"),
                      (png_bytes(mode="RGBA"), "not 8-bit RGB"), (png_bytes(fmt="JPEG"), "not a PNG")]:
        with pytest.raises(InvalidMessage, match=text):
            parse_image_message(dumps({**valid_message("u"), "image": base64.b64encode(png).decode()}))


# ------------------------------------------------------------------ through the stack

def _kafka(env):
    from common.settings import KafkaSettings

    return KafkaSettings(kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])


class DlqReader(threading.Thread):
    """Collects every dead letter, keyed by (source topic, partition, offset)."""

    def __init__(self, env):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        from common.kafka_io import client_config

        s = _kafka(env)
        self.consumer = KafkaConsumer(**client_config(s), group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", fetch_max_wait_ms=100)
        tps = [TopicPartition(s.dlq_topic, p) for p in self.consumer.partitions_for_topic(s.dlq_topic)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.dead: dict[tuple, DeadLetter] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            for batch in self.consumer.poll(timeout_ms=200).values():
                for r in batch:
                    d = read_dead_letter(r)
                    with self.lock:
                        self.dead[(d.source_topic, d.source_partition, d.source_offset)] = d
        self.consumer.close()

    def get(self, key):
        with self.lock:
            return self.dead.get(key)


@pytest.fixture(scope="module")
def hostile_env(local_stack):
    from common.kafka_io import make_producer
    from tests.support import mongo_connect as connect, mongo_images as images_collection
    from common.settings import MongoSettings

    env = local_stack["env"]
    mongo = MongoSettings(mongo_uri=env["MONGO_URI"])
    client = connect(mongo)
    reader = DlqReader(env)
    reader.start()
    producer = make_producer(_kafka(env), max_request_size=4_000_000)
    pids = {name: (local_stack["dir"] / "pids" / f"{name}.pid").read_text()
            for name in ("inference-consumer", "db-consumer", "inference")}
    tried: list = []
    yield {"env": env, "settings": _kafka(env), "dlq": reader, "producer": producer,
           "col": images_collection(client, mongo), "pids": pids, "dir": local_stack["dir"],
           "tried": tried}
    reader.stopped.set()
    producer.close()
    client.close()
    # Figures for docs/RELIABILITY.md: what was tried and how it ended.
    out = Path(__file__).resolve().parents[2] / "results" / "hostile"
    out.mkdir(parents=True, exist_ok=True)
    dead = sum(1 for w in tried if reader.get(w))
    (out / "stack.json").write_text(json.dumps({
        "messages": len(tried), "dead_lettered": dead, "processed": len(tried) - dead,
        "consumer_restarts": sum((local_stack["dir"] / "pids" / f"{n}.pid").read_text() != p
                                 for n, p in pids.items())}, indent=2) + "\n")


def _send(h, value, key: bytes, headers=None):
    md = h["producer"].send(h["settings"].images_topic, key=key, value=value, headers=headers).get(timeout=30)
    return (md.topic, md.partition, md.offset)


def _settled(h, where, image_id) -> str | None:
    """'dlq' / 'stored' once the message at ``where`` reached an end, else None."""
    if h["dlq"].get(where):
        return "dlq"
    if image_id:
        doc = h["col"].find_one({"_id": image_id}, {"prediction": 1, "image": 1})
        if doc and doc.get("prediction") and doc.get("image"):
            return "stored"
    return None


def _image_id(value):
    """The id to look the message up by in MongoDB, if it could be stored at all."""
    try:
        msg = json.loads(value)
        image_id = msg.get("image_id") if isinstance(msg, dict) else None
        image_id.encode()  # a lone surrogate cannot be a BSON string (nor a stored image)
        return image_id
    # RecursionError: the hostile "[[[[..." ones; AttributeError: no string id
    except (TypeError, ValueError, RecursionError, AttributeError):
        return None


@pytest.mark.integration
# No shrinking: on a real stack each replay costs seconds; the failing example is printed.
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_hostile_messages_end_in_the_dlq_and_valid_ones_flow(hostile_env, data):
    h = hostile_env
    tag = new_tag()
    values = data.draw(st.lists(hostile_messages(tag), min_size=4, max_size=10), label="messages")
    sent, keys = [], {}
    for i, value in enumerate(values):
        key = data.draw(st.sampled_from([f"{tag}-cam".encode(), b"\x00\xff", b"k" * 300]), label="key")
        sent.append((_send(h, value, key), value))
        keys[sent[-1][0]] = key
    after = valid_message(tag, 10**7)
    after_at = _send(h, dumps(after), after["device_id"].encode())
    h["producer"].flush()
    h["tried"].extend(w for w, _v in sent)

    deadline = time.monotonic() + HANG_GUARD_S
    pending = {where: value for where, value in sent}
    while pending and time.monotonic() < deadline:
        for where, value in list(pending.items()):
            if _settled(h, where, _image_id(value)):
                pending.pop(where)
        time.sleep(0.3)
    assert not pending, f"never dead-lettered nor stored: {[(w, (v or b'')[:200]) for w, v in pending.items()]}"
    for where, value in sent:
        dead = h["dlq"].get(where)
        if dead:
            assert dead.reason and dead.source_topic == h["settings"].images_topic
            # the original record, byte for byte, whatever it is (binary, huge, null)
            assert (dead.key, dead.value, dead.headers) == (keys[where], value, [])
        else:  # it was valid after all: then the validator agrees
            parse_image_message(value)
    assert _settled(h, after_at, after["image_id"]) == "stored" or _wait_stored(h, after_at, after)
    _consumers_alive(h)


@pytest.mark.integration
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_hostile_schema_2_records_end_in_the_dlq_and_valid_ones_flow(hostile_env, data):
    """Schema 2 (headers + the image file): every hostile record is dead-lettered with its
    headers kept byte for byte, or, valid after all, stored with its prediction; a valid
    record sent after them (a 640x480 JPEG) still flows."""
    h = hostile_env
    tag = new_tag()
    records = data.draw(st.lists(hostile_records(tag), min_size=4, max_size=10), label="records")
    sent = []
    for value, headers in records:
        # kafka-python cannot send a null header value: an absent header stands for it.
        headers = [(k, v) for k, v in headers if v is not None]
        sent.append((_send(h, value, f"{tag}-cam".encode(), headers), value, headers))
    after_value, after_headers = valid_record(tag, 10**7, png_bytes(640, 480, fmt="JPEG"), "jpeg")
    after_at = _send(h, after_value, f"{tag}-cam".encode(), after_headers)
    after_id = dict(after_headers)["image_id"].decode()
    h["producer"].flush()
    h["tried"].extend(w for w, _v, _h in sent)

    def image_id(value, headers):
        try:
            return parse_image_record(value, headers)[0]["image_id"]
        except InvalidMessage:
            return None

    deadline = time.monotonic() + HANG_GUARD_S
    pending = {where: (value, headers) for where, value, headers in sent}
    while pending and time.monotonic() < deadline:
        for where, (value, headers) in list(pending.items()):
            if _settled(h, where, image_id(value, headers)):
                pending.pop(where)
        time.sleep(0.3)
    assert not pending, f"never dead-lettered nor stored: {list(pending.items())[:3]}"
    for where, value, headers in sent:
        dead = h["dlq"].get(where)
        if dead:
            assert dead.reason and (dead.value, dead.headers) == (value, headers)
        else:
            parse_image_record(value, headers)
    assert _settled(h, after_at, after_id) == "stored" or _wait_stored(h, after_at, {"image_id": after_id})
    doc = h["col"].find_one({"_id": after_id})
    assert doc["format"] == "jpeg" and bytes(doc["image"]) == after_value and doc["schema"] == 2
    _consumers_alive(h)


def _wait_stored(h, where, msg, timeout_s=HANG_GUARD_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _settled(h, where, msg["image_id"]) == "stored":
            return True
        time.sleep(0.3)
    return False


def _consumers_alive(h):
    import os

    for name, pid in h["pids"].items():
        now = (h["dir"] / "pids" / f"{name}.pid").read_text()
        assert now == pid and os.path.exists(f"/proc/{pid.strip()}"), f"{name} restarted or died"


@pytest.mark.integration
def test_duplicate_image_ids_with_different_content(hostile_env):
    """Semantics (docs/ARCHITECTURE.md): one document per image id, always complete.
    Two messages with one id on one camera (key) are applied in order: the last one's
    image and prediction win together.  Nothing is dead-lettered: both are valid."""
    h = hostile_env
    tag = new_tag()
    image_id = valid_message(tag)["image_id"]
    first = valid_message(tag, 1, seed=1, image_id=image_id)
    second = valid_message(tag, 2, seed=2, image_id=image_id)
    w1 = _send(h, dumps(first), first["device_id"].encode())
    w2 = _send(h, dumps(second), second["device_id"].encode())
    # the same id from another camera (another key, maybe another partition)
    other = valid_message(tag, 3, seed=3, device=f"{tag}-other")
    twin = valid_message(tag, 4, seed=4, image_id=other["image_id"], device=f"{tag}-cam")
    w3 = _send(h, dumps(other), other["device_id"].encode())
    w4 = _send(h, dumps(twin), twin["device_id"].encode())
    doc = eventually(lambda: (d := h["col"].find_one({"_id": image_id})) and d.get("seq") == 2
                     and d.get("prediction") and d.get("prediction_stored_at") and d)
    assert doc, h["col"].find_one({"_id": image_id})
    assert h["col"].count_documents({"_id": image_id}) == 1
    assert doc["seq"] == 2 and doc["device_id"] == second["device_id"]
    assert base64.b64encode(doc["image"]).decode() == second["image"]
    assert doc["prediction"]
    assert not any(h["dlq"].get(w) for w in (w1, w2, w3, w4))
    assert _wait_stored(h, w4, twin) and h["col"].count_documents({"_id": twin["image_id"]}) == 1
    doc = h["col"].find_one({"_id": twin["image_id"]})
    assert doc["seq"] in (3, 4) and doc["image"] and doc["prediction"]
    _consumers_alive(h)


def test_text_fields_are_bounded():
    """A huge label used to pass validation and make a result the DB consumer
    dead-lettered (over its 64 KiB limit): the image stayed without prediction."""
    for name in ("label", "device_id", "producer_id", "dataset"):
        with pytest.raises(InvalidMessage, match=f"field '{name}' is longer than 256"):
            parse_image_message(dumps({**valid_message("u"), name: "A" * 257}))
    parse_image_message(dumps({**valid_message("u"), "label": "A" * 256}))
