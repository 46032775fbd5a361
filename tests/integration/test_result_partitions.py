"""Results are keyed by producer: each producer reads one partition of the results topic,
the one Kafka's partitioner puts its results in, and gets every result of its own."""

import pytest
from kafka import KafkaConsumer, TopicPartition

from common.kafka_io import client_config, key_partition, make_producer
from common.settings import KafkaSettings
from producer.camera import ProducerRun, ResultListener
from tests.support import HANG_GUARD_S, eventually

pytestmark = pytest.mark.integration


def test_key_partition_is_where_the_broker_puts_the_record(local_stack):
    """key_partition agrees with the client's partitioner, on the real broker, for many keys."""
    kafka = KafkaSettings(kafka_bootstrap_servers=local_stack["env"]["KAFKA_BOOTSTRAP_SERVERS"])
    producer = make_producer(kafka)
    partitions = sorted(producer.partitions_for(kafka.results_topic))
    assert len(partitions) > 1
    keys = [f"p-{i:04x}-key".encode() for i in range(60)]
    try:
        placed = {k: producer.send(kafka.results_topic, key=k, value=b"{}").get(timeout=HANG_GUARD_S).partition
                  for k in keys}
    finally:
        producer.close()
    assert placed == {k: key_partition(k, partitions) for k in keys}
    assert len(set(placed.values())) == len(partitions)  # the keys spread over every partition


def test_the_listener_reads_its_own_partition_only(local_stack):
    kafka = KafkaSettings(kafka_bootstrap_servers=local_stack["env"]["KAFKA_BOOTSTRAP_SERVERS"])
    run = ProducerRun("p-partition-test")
    listener = ResultListener(kafka, run)
    listener.start()
    try:
        assert listener.ready.wait(HANG_GUARD_S)
        eventually(lambda: listener.consumer is not None and listener.consumer.assignment())
        assigned = {tp.partition for tp in listener.consumer.assignment()}
        probe = KafkaConsumer(**client_config(kafka))
        partitions = sorted(probe.partitions_for_topic(kafka.results_topic))
        probe.close()
        assert len(partitions) > 1 and assigned == {key_partition(b"p-partition-test", partitions)}
    finally:
        listener.stop_event.set()
        listener.join(HANG_GUARD_S)


def test_results_of_several_producers_land_on_their_own_partitions(local_stack, tmp_path):
    """Two producers through the real pipeline: each gets all its results back, and every
    result record sits on the partition of its producer id with the producer_id header."""
    import subprocess
    import sys

    from tests.support import ROOT

    ids = ["p-own-a", "p-own-b"]
    procs = [subprocess.Popen([sys.executable, "-m", "producer", "--count", "12", "--rate", "30", "--no-progress",
                               "--producer-id", pid, "--out", str(tmp_path / pid)],
                              cwd=ROOT, env=local_stack["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for pid in ids]
    for p in procs:
        out, _ = p.communicate(timeout=HANG_GUARD_S)
        assert p.returncode == 0, out[-3000:]
        assert "missing 0" in out, out[-2000:]
    kafka = KafkaSettings(kafka_bootstrap_servers=local_stack["env"]["KAFKA_BOOTSTRAP_SERVERS"])
    reader = KafkaConsumer(**client_config(kafka), enable_auto_commit=False, consumer_timeout_ms=3000)
    partitions = sorted(reader.partitions_for_topic(kafka.results_topic))
    reader.assign([TopicPartition(kafka.results_topic, p) for p in partitions])
    reader.seek_to_beginning()
    seen = {pid: set() for pid in ids}
    for record in reader:
        header = dict(record.headers or ()).get("producer_id", b"").decode()
        if header in seen:
            assert record.key == header.encode()
            assert record.partition == key_partition(record.key, partitions)
            seen[header].add(record.offset)
    reader.close()
    assert all(len(v) >= 12 for v in seen.values()), {k: len(v) for k, v in seen.items()}
