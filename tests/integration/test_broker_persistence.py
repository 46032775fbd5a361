"""The local stack's broker on persistent storage (STACK_BROKER_STORAGE=s3, stack/broker.py):
SIGKILLed, the supervisor restarts it like any component, and it comes back with every
acknowledged record and every committed consumer-group offset, the pipeline's own groups
included (a lost offset would make a consumer start over from the beginning or the end)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from stack.control import LocalStack
from tests.conftest import STACK_TEST_ENV
from tests.support import HANG_GUARD_S, ROOT, eventually

TOPIC = "broker-persistence-test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, cifar_archive):
    st = LocalStack(tmp_path_factory.mktemp("broker-stack"), {
        **STACK_TEST_ENV, "DATASET_SOURCE": str(cifar_archive), "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0",
        "STACK_BROKER_STORAGE": "s3",
        # The retention runs, but deletes nothing while the tests run (one test prunes itself).
        "STACK_BROKER_RETENTION_S": "3600", "STACK_BROKER_RETENTION_INTERVAL_S": "1"}, timeout_s=300)
    try:
        st.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield st
    st.stop()


def _settings(stack):
    from common.settings import KafkaSettings

    return KafkaSettings(kafka_bootstrap_servers=stack.env["KAFKA_BOOTSTRAP_SERVERS"])


def _committed(stack, group: str, topics: tuple[str, ...]) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    from common.kafka_io import client_config

    consumer = KafkaConsumer(**client_config(_settings(stack)), group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return {f"{tp.topic}[{tp.partition}]": consumer.committed(tp) for tp in tps}
    finally:
        consumer.close()


def _pipeline_offsets(stack) -> dict:
    s = _settings(stack)
    return {"iot-inference": _committed(stack, "iot-inference", (s.images_topic,)),
            "iot-db-writer": _committed(stack, "iot-db-writer", (s.images_topic, s.results_topic))}


def _produce_images(stack, out, count: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "producer", "--count", str(count), "--rate", "20", "--no-progress",
                           "--out", str(out), "--result-timeout", str(HANG_GUARD_S)],
                          cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=2 * HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "producer.json").read_text())


def test_a_sigkilled_broker_is_restarted_with_its_records_and_committed_offsets(stack, tmp_path):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    from common.kafka_io import client_config

    s = _settings(stack)
    # The pipeline runs, so its groups have committed offsets to keep.
    assert _produce_images(stack, tmp_path / "before", 20)["results"] == 20
    # A group of the test's own with a committed position in the middle of its topic.
    admin = KafkaAdminClient(**client_config(s))
    admin.create_topics([NewTopic(TOPIC, 2, 1)])
    admin.close()
    producer = KafkaProducer(**client_config(s), acks="all")
    values = [f"record-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(20)]
    for i, v in enumerate(values):
        producer.send(TOPIC, key=str(i % 2).encode(), value=v).get(timeout=60)
    producer.close()
    group = f"persist-{uuid.uuid4().hex[:6]}"
    consumer = KafkaConsumer(**client_config(s), group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    tps = [TopicPartition(TOPIC, p) for p in range(2)]
    consumer.assign(tps)
    consumer.commit({tp: OffsetAndMetadata(3 + tp.partition, "", -1) for tp in tps})
    consumer.close()
    mine = _committed(stack, group, (TOPIC,))
    assert mine == {f"{TOPIC}[0]": 3, f"{TOPIC}[1]": 4}
    pipeline = _pipeline_offsets(stack)
    # 20 images by 8 cameras (keys): each group has committed on some partition at least.
    assert all(any(offsets.values()) for offsets in pipeline.values()), pipeline

    old = stack.pid("kafka")
    stack.send("kafka")  # SIGKILL, as python -m stack kill kafka
    assert eventually(lambda: stack.restarted("kafka", old)), stack.logs()

    # Every committed offset is back, the pipeline's groups' too, and every record.
    assert eventually(lambda: _try(lambda: _committed(stack, group, (TOPIC,)))) == mine, stack.logs()
    assert _pipeline_offsets(stack) == pipeline
    reader = KafkaConsumer(**client_config(s), group_id=None, enable_auto_commit=False,
                           auto_offset_reset="earliest", fetch_max_wait_ms=100)
    reader.assign(tps)
    reader.seek_to_beginning(*tps)
    got: list[bytes] = []
    eventually(lambda: got.extend(r.value for b in reader.poll(timeout_ms=300).values() for r in b)
               or len(got) >= len(values))
    reader.close()
    assert sorted(got) == sorted(values)
    # The stack did not stop: it restarted the broker and the pipeline goes on.
    assert (stack.dir / "ready").exists() and not (stack.dir / "failed").exists()
    assert _produce_images(stack, tmp_path / "after", 20)["results"] == 20


def _try(probe):
    try:
        return probe()
    except Exception:  # noqa: BLE001 - the broker still starting
        return None


def test_a_consumer_reads_past_thousands_of_batches_on_the_s3_storage(stack):
    """tansu's S3 engine lists a partition's batch objects at every fetch and stops at the
    fetch's max wait: with the stack's wait a consumer must still read a partition of 2,500
    one-record batches to its end (at a 40 ms wait it stopped after the first few hundred)."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from common.kafka_io import client_config, make_consumer

    topic, count = f"{TOPIC}-batches-{uuid.uuid4().hex[:6]}", 2500
    admin = KafkaAdminClient(**client_config(_settings(stack)))
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    # One record per request, each acknowledged before the next: one batch object each.
    producer = KafkaProducer(**client_config(_settings(stack)), acks=1, linger_ms=0,
                             max_in_flight_requests_per_connection=1)
    try:
        for i in range(count):
            producer.send(topic, value=str(i).encode()).get(timeout=HANG_GUARD_S)
    finally:
        producer.close()
    wait_ms = int(stack.env["KAFKA_FETCH_MAX_WAIT_MS"])
    consumer = make_consumer(_settings(stack).model_copy(update={"kafka_fetch_max_wait_ms": wait_ms}), topic,
                             group_id=f"listing-{uuid.uuid4().hex[:6]}")
    got: list[int] = []
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                got.extend(int(r.value) for r in records)
    finally:
        consumer.close()
    assert got == list(range(count)), f"read {len(got)} of {count} records with a {wait_ms} ms fetch wait"


def _retention(stack, retention_s: float):
    """The stack's retention (stack/broker_retention.py) on the stack's s3rver, with the
    endpoint and key file its running component was given."""
    import psutil

    from stack.broker_retention import Retention

    argv = psutil.Process(stack.pid("broker-retention")).cmdline()
    endpoint, keys = argv[argv.index("--endpoint") + 1], argv[argv.index("--keys") + 1]
    key_id, secret = open(keys).read().split()[:2]
    return Retention(endpoint, key_id, secret, argv[argv.index("--bucket") + 1], retention_s)


def _batches(retention, topic: str, partition: int = 0) -> list[int]:
    return sorted(base for _key, base, _modified in retention.batches(topic, partition))


def test_retention_deletes_only_batches_every_group_has_committed_past(stack, tmp_path):
    """The retention deletes a batch once every group that commits on its topic has committed
    past it (and it is old enough), never one a group still has to read; the groups then read
    on from their offsets, and the pipeline's own topics pruned to their committed offsets
    lose nothing."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata

    from common.kafka_io import client_config

    s = _settings(stack)
    topic = f"{TOPIC}-retention-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(**client_config(s))
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(**client_config(s), acks=1, linger_ms=0, max_in_flight_requests_per_connection=1)
    for i in range(30):
        producer.send(topic, value=str(i).encode()).get(timeout=HANG_GUARD_S)
    producer.close()
    tp = TopicPartition(topic, 0)

    def commit(group: str, offset: int) -> None:
        c = KafkaConsumer(**client_config(s), group_id=group, enable_auto_commit=False)
        c.assign([tp])
        c.commit({tp: OffsetAndMetadata(offset, "", -1)})
        c.close()

    fast, slow = f"fast-{uuid.uuid4().hex[:6]}", f"slow-{uuid.uuid4().hex[:6]}"
    commit(fast, 20)
    commit(slow, 5)
    # The running component deletes nothing this young (the module's STACK_BROKER_RETENTION_S),
    # nor does a pass that counts the batches too young.
    assert _batches(_retention(stack, 3600), topic) == list(range(30))
    _retention(stack, 3600).prune()
    assert _batches(_retention(stack, 3600), topic) == list(range(30))

    now = _retention(stack, 0)
    now.prune()
    assert _batches(now, topic) == list(range(5, 30)), "the slow group still has to read from 5"
    commit(slow, 12)
    now.prune()
    assert _batches(now, topic) == list(range(12, 30))

    # Each group reads on from its offset, the records it has not read all there.
    reader = KafkaConsumer(**client_config(s), group_id=slow, enable_auto_commit=False, fetch_max_wait_ms=100)
    reader.assign([tp])
    got: list[int] = []
    eventually(lambda: got.extend(int(r.value) for b in reader.poll(timeout_ms=300).values() for r in b)
               or len(got) >= 18)
    reader.close()
    assert got == list(range(12, 30))

    # The pipeline's topics pruned to their groups' offsets: the pipeline goes on, nothing lost.
    assert _produce_images(stack, tmp_path / "before", 20)["results"] == 20
    deleted = now.prune()
    assert any(t == s.images_topic for t, _ in deleted), deleted
    assert _produce_images(stack, tmp_path / "after", 20)["results"] == 20
