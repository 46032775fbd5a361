"""End to end through the real parts: Kafka-protocol broker, MongoDB wire server,
Gunicorn over sockets, both consumers, the producer and the demo command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from analysis.summary import close_run
from common.labels import CIFAR10_CLASSES
from common.schema import dumps, encode_png, make_image_message, make_result_message
from common.settings import KafkaSettings, MongoSettings
from tests.support import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def kafka(env) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])


def collection(env):
    from tests.support import mongo_connect as connect, mongo_images as images_collection

    mongo = MongoSettings(mongo_uri=env["MONGO_URI"])
    return images_collection(connect(mongo), mongo)


def store(env):
    from common.store import open_reader

    return open_reader(MongoSettings(mongo_uri=env["MONGO_URI"]))


def run_producer(env, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer", "--out", str(out), "--no-progress",
                           "--result-timeout", str(HANG_GUARD_S), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=2 * HANG_GUARD_S)


def test_every_image_is_classified_and_stored_once(local_stack, tmp_path):
    env = local_stack["env"]
    proc = run_producer(env, tmp_path, "--count", "60", "--rate", "60", "--devices", "3",
                        "--producer-id", "it-flow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective settings" in proc.stderr and "KAFKA_BOOTSTRAP_SERVERS=" in proc.stderr
    summary = close_run(tmp_path, store(env), timeout_s=HANG_GUARD_S)
    assert summary["sent"] == 60 and summary["results"] == 60
    assert summary["stored_with_prediction"] == 60 and summary["lost"] == 0
    assert summary["duplicate_documents"] == 0
    assert summary["untrained_model"] is True and "untrained" in summary["model"]
    assert summary["e2e_ms"]["p50"] <= summary["e2e_ms"]["p99"] <= summary["e2e_ms"]["max"]

    header, *rows = (tmp_path / "latencies.csv").read_text().splitlines()
    assert header == "image_id,device_id,producer_id,seq,sent_at,result_at,e2e_ms,label,prediction,model"
    assert len(rows) == 60 and all(r.split(",")[6] for r in rows)

    from PIL import Image

    docs = list(collection(env).find({"producer_id": "it-flow"}))
    assert len(docs) == 60 and len({d["_id"] for d in docs}) == 60
    assert {d["device_id"] for d in docs} == {f"it-flow-cam{i:02d}" for i in range(3)}
    for doc in docs:
        assert doc["prediction"] in CIFAR10_CLASSES and 0 <= doc["confidence"] <= 1
        assert Image.open(io.BytesIO(doc["image"])).size == (32, 32)
        assert doc["stored_at"] >= doc["sent_at"] and doc["prediction_stored_at"] >= doc["sent_at"]
        assert doc["received_at"] <= doc["inferred_at"] <= doc["published_at"]
    stages = (tmp_path / "stages.csv").read_text().splitlines()
    assert stages[0] == "image_id,sent_at,received_at,inferred_at,published_at,result_at,stored_at"
    assert all(line.split(",")[6] for line in stages[1:])  # stored_at filled from MongoDB


def read_dead_letters(settings: KafkaSettings, want, timeout_s: float = HANG_GUARD_S) -> list:
    """All dead letters (common.deadletter.DeadLetter) read from the start until ``want(records)`` holds."""
    from kafka import KafkaConsumer, TopicPartition

    from common.deadletter import read_dead_letter
    from common.kafka_io import client_config

    topic = settings.dlq_topic

    consumer = KafkaConsumer(**client_config(settings), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list = []
    deadline = time.monotonic() + timeout_s
    while not want(records) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(read_dead_letter(r) for r in batch)
    consumer.close()
    return records


def valid_image(producer_id: str, seq: int) -> dict:
    msg = make_image_message(image=encode_png(np.full((32, 32, 3), seq, np.uint8)),
                             device_id=f"{producer_id}-cam", producer_id=producer_id, seq=seq,
                             label=None, dataset="synthetic")
    msg["sent_at"] = time.time()
    return msg


def test_bad_input_goes_to_the_dead_letter_topic_and_valid_input_still_flows(local_stack):
    from PIL import Image

    from common.kafka_io import make_producer

    env = local_stack["env"]
    settings = kafka(env)
    tag = uuid.uuid4().hex[:8]
    wrong_size = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(wrong_size, format="PNG")
    import base64

    bad = {
        f"garbage-{tag}": b"\x00\x01 not json " + tag.encode(),
        f"truncated-{tag}": dumps(valid_image(tag, 1))[:80] + tag.encode(),
        f"schema-{tag}": dumps({**valid_image(tag, 2), "schema": 99, "tag": tag}),
        f"base64-{tag}": dumps({**valid_image(tag, 3), "image": "%%%", "tag": tag}),
        f"size-{tag}": dumps({**valid_image(tag, 4), "tag": tag,
                              "image": base64.b64encode(wrong_size.getvalue()).decode()}),
        f"oversize-{tag}": dumps({**valid_image(tag, 5), "tag": tag, "pad": "x" * 300_000}),
    }
    expected_reason = {"garbage": "invalid JSON", "truncated": "invalid JSON",
                       "schema": "unknown schema version 99", "base64": "not valid base64",
                       "size": "16x16", "oversize": "over the"}
    after = valid_image(f"dlq-{tag}", 9)
    producer = make_producer(settings, max_request_size=2_000_000)
    for key, value in bad.items():
        producer.send(settings.images_topic, key=key.encode(), value=value)
    producer.send(settings.images_topic, key=after["device_id"].encode(), value=dumps(after))
    bad_result = make_result_message(after, prediction="cat", confidence=0.5, model="m",
                                     received_at=1.0, inferred_at=1.0)
    producer.send(settings.results_topic, key=b"x",
                  value=dumps({**bad_result, "confidence": "high", "tag": tag}))
    producer.flush()

    def mine(records):
        return [r for r in records if tag.encode() in (r.value or b"")]

    dead = read_dead_letters(settings, lambda rs: len(mine(rs)) >= len(bad) + 1)
    dead = mine(dead)
    for kind, text in expected_reason.items():
        key = f"{kind}-{tag}".encode()
        # each bad message is in the DLQ as it was sent (key and value), with its reason
        assert any(d.key == key and d.value == bad[key.decode()] and text in d.reason for d in dead), \
            (kind, [(d.key, d.reason) for d in dead])
    assert any(d.source_topic == settings.results_topic and "confidence" in d.reason and d.key == b"x"
               for d in dead)
    assert all(d.failed_at and d.source_offset >= 0 and d.replayable for d in dead)
    # The valid image sent after the bad ones was classified and stored.
    col = collection(env)
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        doc = col.find_one({"_id": after["image_id"]})
        if doc and doc.get("prediction"):
            break
        time.sleep(0.3)
    assert doc and doc["prediction"] in CIFAR10_CLASSES


def test_supervisor_restarts_a_killed_component(local_stack, tmp_path):
    env, d = local_stack["env"], local_stack["dir"]
    pid_file = d / "pids" / "db-consumer.pid"
    old = int(pid_file.read_text())
    out = subprocess.run([sys.executable, "-m", "stack", "kill", "db-consumer"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + HANG_GUARD_S
    new = old
    while new == old and time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            new = int(pid_file.read_text())
        except (OSError, ValueError):
            pass
    assert new != old and os.path.exists(f"/proc/{new}")
    proc = run_producer(env, tmp_path, "--count", "20", "--rate", "40", "--producer-id", "it-restart")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert close_run(tmp_path, store(env), timeout_s=HANG_GUARD_S)["lost"] == 0


def test_demo_command_writes_the_run_directory(local_stack, tmp_path):
    env = local_stack["env"]
    out = subprocess.run([sys.executable, "-m", "experiments.demo", "--count", "25", "--rate", "25",
                          "--results", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    latest = tmp_path / "latest"
    assert latest.is_symlink()
    summary = json.loads((latest / "summary.json").read_text())
    assert {"sent", "results", "stored", "stored_with_prediction", "lost", "model",
            "untrained_model", "accuracy", "throughput_img_s", "e2e_ms"} <= set(summary)
    assert summary["sent"] == 25 and summary["lost"] == 0
    assert set(summary["e2e_ms"]) == {"p50", "p90", "p95", "p99", "max"}
    assert (latest / "latency_cdf.png").stat().st_size > 10_000
    assert "lost" in out.stdout and "OK" in out.stdout
    # The stack was already up, so the demo left it running.
    assert (local_stack["dir"] / "ready").exists()


def test_a_corrupt_image_in_a_batch_is_dead_lettered_and_the_rest_classified(local_stack):
    """The PNG header is valid (so the consumer's cheap check passes) but the pixel data
    is not: the service rejects that one instance, the consumer dead-letters it, and
    the images sent with it in the same burst are classified and stored."""
    import base64

    from common.kafka_io import make_producer

    env = local_stack["env"]
    settings = kafka(env)
    tag = f"corrupt-{uuid.uuid4().hex[:8]}"
    good = [valid_image(tag, i) for i in range(5)]
    broken = valid_image(tag, 99)
    png = bytearray(base64.b64decode(broken["image"]))
    idat = png.index(b"IDAT")
    png[idat + 6: idat + 30] = b"\xff" * 24  # corrupt the zlib stream after IHDR
    broken["image"] = base64.b64encode(bytes(png)).decode()
    broken["device_id"] = f"{tag}-cam"
    producer = make_producer(settings)
    for msg in good[:2] + [broken] + good[2:]:  # same key: same partition, one burst
        producer.send(settings.images_topic, key=msg["device_id"].encode(), value=dumps(msg))
    producer.flush()

    dead = read_dead_letters(settings, lambda rs: any(r.image_id() == broken["image_id"] for r in rs))
    mine = [d for d in dead if d.image_id() == broken["image_id"]]
    assert mine and mine[0].reason.startswith("inference failed"), mine
    assert mine[0].value == dumps(broken)
    col = collection(env)
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        done = col.count_documents({"producer_id": tag, "prediction": {"$exists": True}})
        if done == len(good):
            break
        time.sleep(0.3)
    assert done == len(good)
    assert col.find_one({"_id": broken["image_id"], "prediction": {"$exists": True}}) is None
