"""Kafka client construction from KafkaSettings (one place for security and tuning)."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from common.settings import KafkaSettings, secret

log = logging.getLogger(__name__)


def key_partition(key: bytes, partitions: list[int]) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client and
    kafka-python) puts a record with this key in."""
    ordered = sorted(partitions)
    return ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]


def client_config(s: KafkaSettings) -> dict:
    """Connection and security options shared by producers, consumers and the admin client."""
    cfg: dict = {"bootstrap_servers": s.kafka_bootstrap_servers.split(","),
                 "security_protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.startswith("SASL"):
        cfg.update(sasl_mechanism=s.kafka_sasl_mechanism,
                   sasl_plain_username=s.kafka_sasl_username,
                   sasl_plain_password=secret(s.kafka_sasl_password))
    if s.kafka_security_protocol.endswith("SSL") and s.kafka_ssl_cafile:
        cfg["ssl_cafile"] = s.kafka_ssl_cafile
    return cfg


def make_producer(s: KafkaSettings, **overrides):

    cfg = client_config(s)
    cfg.update(acks="all", linger_ms=s.kafka_linger_ms, batch_size=s.kafka_producer_batch_bytes,
               retries=2**31 - 1, max_in_flight_requests_per_connection=5,
               delivery_timeout_ms=int(s.kafka_delivery_timeout_s * 1000),
               # send() blocks at most this long for metadata (broker away), then raises
               # KafkaTimeoutError, which the producer retries until the delivery timeout.
               max_block_ms=s.kafka_max_block_ms, enable_idempotence=s.kafka_idempotence)
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def make_consumer(s: KafkaSettings, *topics: str, group_id: str | None, **overrides):
    """A consumer with manual commits: offsets are committed only after the work is done."""

    cfg = client_config(s)
    cfg.update(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
               session_timeout_ms=s.kafka_session_timeout_ms,
               heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
               max_poll_interval_ms=s.kafka_max_poll_interval_ms,
               fetch_max_wait_ms=s.kafka_fetch_max_wait_ms)
    cfg.update(overrides)
    return KafkaConsumer(*topics, **cfg)


def ensure_topics(s: KafkaSettings, timeout_s: float = 30.0) -> list[str]:
    """Create the pipeline's topics if missing (idempotent); returns the topics created."""

    wanted = {s.images_topic: s.images_partitions, s.results_topic: s.results_partitions,
              s.dlq_topic: 1}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(**client_config(s))
            break
        except Exception as exc:  # broker still starting
            if time.monotonic() > deadline:
                raise
            log.info("waiting for Kafka at %s: %s", s.kafka_bootstrap_servers, exc)
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        created = []
        for name, partitions in wanted.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()
