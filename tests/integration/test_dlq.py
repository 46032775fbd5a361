"""Dead letters through the real stack: the original record kept byte for byte, and
``python -m consumers.dlq`` listing, showing and replaying them (idempotently)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from common.deadletter import REPLAY_OF, read_dead_letter, to_dead_letter
from common.schema import dumps
from common.settings import KafkaSettings, MongoSettings
from tests.hostile import valid_message
from tests.support import HANG_GUARD_S, eventually

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def kafka(env) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])


def mongo_db(env):
    from tests.support import mongo_connect as connect

    mongo = MongoSettings(mongo_uri=env["MONGO_URI"])
    return connect(mongo)[mongo.mongo_database]


class Dlq:
    """Reads the DLQ topic from the start; ``find`` waits for the dead letters that match."""

    def __init__(self, settings: KafkaSettings):
        from kafka import KafkaConsumer, TopicPartition

        from common.kafka_io import client_config

        self.consumer = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", fetch_max_wait_ms=100)
        tps = [TopicPartition(settings.dlq_topic, p)
               for p in self.consumer.partitions_for_topic(settings.dlq_topic)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.dead: list = []

    def find(self, match, count: int = 1) -> list:
        def probe():
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.dead.extend(read_dead_letter(r) for r in batch)
            found = [d for d in self.dead if match(d)]
            return found if len(found) >= count else None

        return eventually(probe) or [d for d in self.dead if match(d)]

    def close(self):
        self.consumer.close()


@pytest.fixture
def dlq(local_stack):
    reader = Dlq(kafka(local_stack["env"]))
    yield reader
    reader.close()


def cli(env, *args: str) -> dict | list:
    out = subprocess.run([sys.executable, "-m", "consumers.dlq", *args, "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


def statuses(result: dict) -> dict:
    return {o["offset"]: o["status"] for o in result["outcomes"]}


def test_the_broker_round_trips_headers_and_large_records(local_stack):
    """tansu (the local broker) keeps header order, duplicates, empty and binary values, and takes a
    record larger than Apache Kafka's default 1 MiB limit (it has no message size limit)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    from common.kafka_io import client_config, make_producer

    settings = kafka(local_stack["env"])
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**client_config(settings))
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    headers = [("a", b"\x00\xff\xfe"), ("a", b""), ("dlq.reason", b"x"), ("\u00e9t\u00e9", bytes(range(256)))]
    big = bytes(range(256)) * 6000  # 1.5 MB
    producer = make_producer(settings, max_request_size=4_000_000)
    producer.send(topic, key=None, value=big, headers=headers).get(timeout=HANG_GUARD_S)
    producer.close()
    consumer = KafkaConsumer(**client_config(settings), group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    got: list = []
    eventually(lambda: got.extend(r for b in consumer.poll(timeout_ms=300).values() for r in b) or got)
    consumer.close()
    assert got and (got[0].key, got[0].value, got[0].headers) == (None, big, headers)


def test_invalid_messages_are_kept_byte_for_byte_and_dead_lettered_again_when_replayed(local_stack, dlq):
    from common.kafka_io import make_producer

    env = local_stack["env"]
    settings = kafka(env)
    tag = f"dlq-{uuid.uuid4().hex[:8]}"
    not_png = {**valid_message(tag, 1), "image": base64.b64encode(b"not a PNG at all " * 20).decode(),
               "note": "padding the contract ignores " * 200}
    big = dumps(not_png)  # valid JSON, valid fields, but the image is no PNG; over 6 kB (the note)
    binary = bytes(range(255, -1, -1)) * 3 + tag.encode()  # starts with 0xff: not UTF-8, not JSON
    sent = {  # name: (key, value, headers)
        "big": (f"{tag}-cam".encode(), big, [("trace", tag.encode()), ("bin", b"\xff\x00"), ("trace", b"")]),
        "binary": (None, binary, [("h", b"")]),
    }
    reasons = {"big": "image is not a PNG", "binary": "invalid JSON"}
    producer = make_producer(settings)
    where = {name: producer.send(settings.images_topic, key=k, value=v, headers=h).get(timeout=HANG_GUARD_S)
             for name, (k, v, h) in sent.items()}
    producer.close()

    first = {}
    for name, md in where.items():
        found = dlq.find(lambda d, md=md: (d.source_topic, d.source_partition, d.source_offset)
                         == (md.topic, md.partition, md.offset))
        assert len(found) == 1, (name, found)  # one dead letter per bad message
        d = first[name] = found[0]
        assert (d.key, d.value, d.headers) == sent[name], name
        assert reasons[name] in d.reason and d.replayable

    # the tool lists and shows them
    listed = {e["offset"]: e for e in cli(env, "list", "--source-topic", settings.images_topic,
                                          "--reason", "not a png")}
    assert listed[first["big"].dlq_offset]["size"] == len(big)
    assert listed[first["big"].dlq_offset]["image_id"] == not_png["image_id"]
    assert first["binary"].dlq_offset not in listed
    shown = cli(env, "show", str(first["binary"].dlq_offset))
    assert base64.b64decode(shown["value_b64"]) == binary and shown["key_b64"] is None

    # replayed, they fail again: the same reason, the same bytes, replay.of naming the first
    offsets = [str(first[n].dlq_offset) for n in sent]
    assert set(statuses(cli(env, "replay", *offsets)).values()) == {"replayed"}
    for name, d in first.items():
        again = dlq.find(lambda x, d=d: (REPLAY_OF, d.ref.encode()) in x.headers)
        assert len(again) == 1, name
        assert (again[0].key, again[0].value) == (d.key, d.value)
        assert again[0].headers == d.headers + [(REPLAY_OF, d.ref.encode())]
        assert again[0].reason == d.reason and again[0].source_topic == settings.images_topic
    # nothing of them reached MongoDB
    assert mongo_db(env)["images"].count_documents({"_id": not_png["image_id"]}) == 0
    # a second replay does nothing: they were replayed once already
    assert set(statuses(cli(env, "replay", *offsets)).values()) == {"skipped"}
    dry = cli(env, "replay", *offsets, "--force", "--dry-run")
    assert set(statuses(dry).values()) == {"would replay"}


def test_a_valid_image_from_the_dlq_is_stored_exactly_once(local_stack, dlq):
    """As if dead-lettered during an outage: replayed, it is classified and stored once, and
    replaying it again does nothing."""
    from kafka.consumer.fetcher import ConsumerRecord

    from common.kafka_io import make_producer

    env = local_stack["env"]
    settings = kafka(env)
    tag = f"dlq-{uuid.uuid4().hex[:8]}"
    msg = valid_message(tag, 1)
    key, value = msg["device_id"].encode(), dumps(msg)
    original = ConsumerRecord(settings.images_topic, 0, -1, 10**9, int(time.time() * 1000), 0, key, value,
                              [("origin", b"outage")], None, len(key), len(value), -1)
    dead_key, dead_value, dead_headers = to_dead_letter(original, "inference failed: service unavailable")
    producer = make_producer(settings)
    md = producer.send(settings.dlq_topic, key=dead_key, value=dead_value,
                       headers=dead_headers).get(timeout=HANG_GUARD_S)
    producer.close()
    ref = str(md.offset) if md.partition == 0 else f"{md.partition}:{md.offset}"

    dry = cli(env, "replay", ref, "--dry-run")
    assert statuses(dry) == {md.offset: "would replay"}
    first = cli(env, "replay", ref)
    assert statuses(first) == {md.offset: "replayed"}
    assert first["outcomes"][0]["to"]["topic"] == settings.images_topic

    images = mongo_db(env)["images"]
    doc = eventually(lambda: images.find_one({"_id": msg["image_id"], "prediction": {"$exists": True}}))
    assert doc and doc["producer_id"] == tag and base64.b64encode(doc["image"]).decode() == msg["image"]
    assert images.count_documents({"_id": msg["image_id"]}) == 1
    assert images.count_documents({"producer_id": tag}) == 1

    # again: skipped (stored), with --force too; the replay state says it was replayed once
    for extra in ((), ("--force",)):
        again = cli(env, "replay", ref, *extra)
        assert statuses(again) == {md.offset: "skipped"} and "already stored" in again["outcomes"][0]["detail"]
        assert again["counts"]["replayed"] == 0
    state = mongo_db(env)["dlq_replays"].find_one({"_id": f"{settings.dlq_topic}:{md.partition}:{md.offset}"})
    assert state and state["replays"] == 1 and state["image_id"] == msg["image_id"]
    assert images.count_documents({"_id": msg["image_id"]}) == 1
    # by reason too: the selection finds it, and it is still skipped
    by_reason = cli(env, "replay", "--reason", "service unavailable", "--source-topic", settings.images_topic)
    assert by_reason["counts"]["replayed"] == 0 and statuses(by_reason).get(md.offset) == "skipped"
