"""Typed settings for every component, read from the environment: the one place they live
(docs/ARCHITECTURE.md, "Settings"; every variable: docs/SETTINGS.md).

The pipeline's groups are here, the servers' in :mod:`common.settings_service`, the local
stack's and the experiments' in :mod:`common.settings_stack`, the test suites' in
:mod:`common.settings_suites`, the shared machinery in :mod:`common.settings_base`; import
them all from here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator

from common.settings_base import (REPLACED, RETIRED, ProjectSettings, SettingsError, describe, env_name, given, level_name, mask,
                                  mask_env, mask_uris, check_replaced, secret, with_flags)
from common.settings_service import REQUEST_BYTES_CAP, DashboardSettings, GunicornSettings, ServiceSettings, \
    request_bytes_limit
from common.settings_stack import DemoSettings, FleetSettings, StackPlumbingSettings, StackSettings
from common.settings_suites import RehearsalSettings, SuiteSettings
from common.wire import MAX_IMAGE_MESSAGE_BYTES

__all__ = ["REPLACED", "RETIRED", "REQUEST_BYTES_CAP", "SETTINGS_GROUPS", "CacheSettings",
           "CouchSettings", "DashboardSettings", "DatasetSettings", "DbWriterSettings", "DemoSettings", "DlqToolSettings",
           "FleetSettings", "GunicornSettings", "InferenceClientSettings", "KafkaSettings", "LogSettings",
           "MetricsSettings", "MongoSettings", "PostgresSettings", "ProducerSettings", "ProjectSettings",
           "RehearsalSettings", "RetentionSettings", "ServiceSettings", "SettingsError", "StackPlumbingSettings", "StackSettings", "StoreSettings", "SuiteSettings",
           "describe", "env_name", "given", "mask", "mask_env", "mask_uris", "check_replaced", "request_bytes_limit",
           "secret", "settings_env", "with_flags"]


class KafkaSettings(ProjectSettings):
    """Kafka: every producer and consumer, the DLQ tool and the local stack."""

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description=(
        "Kafka brokers, comma-separated host:port. The local stack uses an external Kafka when set."))
    images_topic: str = Field("iot-images", description="Topic of the cameras' images.")
    results_topic: str = Field("iot-inference", description="Topic of the predictions.")
    dlq_topic: str = Field("iot-dlq", description="Dead-letter topic (docs/ARCHITECTURE.md, dead letters).")
    images_partitions: int = Field(3, ge=1, description=(
        "Partitions the images topic is created with: the most inference consumers that share the work."))
    results_partitions: int = Field(3, ge=1, description="Partitions the results topic is created with.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol (the deployment's SASL/SCRAM-over-TLS switch sets it).")
    kafka_sasl_mechanism: str = Field("SCRAM-SHA-512", description="SASL mechanism, with SASL_* protocols.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (a secret: printed masked).")
    kafka_ssl_cafile: str | None = Field(None, description="CA file that signed the brokers' TLS certificates.")
    # The embedded broker takes about half of the session timeout to complete a join, so
    # keep it modest; real Kafka is unaffected.
    kafka_session_timeout_ms: int = Field(6_000, description="Consumer group session timeout.")
    kafka_heartbeat_interval_ms: int = Field(1_000, description="Consumer group heartbeat interval.")
    kafka_max_poll_interval_ms: int = Field(300_000, description=(
        "Longest time between two polls before a consumer leaves its group."))
    # 20 ms rather than 5: at 75 images/s per producer a 5 ms linger sends one image per
    # request, and the broker, the producers and the DB consumer pay per request (+10 %
    # pipeline throughput on 2 cores, docs/PERFORMANCE.md).
    kafka_linger_ms: int = Field(20, description=(
        "How long a producer waits to put more records in one request; adds at most this to a "
        "producer's send (the inference consumer flushes its results at once)."))
    # The broker answers as soon as one byte is there (fetch.min.bytes 1), so this costs no
    # latency; 10 ms made an idle consumer send 100 fetches/s and the broker burn CPU.
    kafka_fetch_max_wait_ms: int = Field(100, ge=1, description=(
        "Consumers' fetch long-poll: bounds how often an idle consumer asks, not latency. The local "
        "stack sets 40 for its embedded broker (1000 on its S3 storage) unless this is set."))
    kafka_producer_batch_bytes: int = Field(256 * 1024, description="kafka-python's producer batch, in bytes.")
    # kafka-python 3 has no bound of its own on what a producer holds (Java's buffer.memory):
    # the producer keeps this one (producer/sending.py), so that a broker away for long holds
    # a bounded number of images and what does not fit is counted, never dropped unseen.
    kafka_producer_buffer_bytes: int = Field(32 * 1024 * 1024, ge=1, description=(
        "Bytes of images a producer holds that the broker has not acknowledged yet (Kafka's "
        "buffer.memory; 32 MiB as Kafka's). While the broker is away they wait in it and go when it "
        "returns; an image that finds no room within KAFKA_MAX_BLOCK_MS counts as failed."))
    kafka_idempotence: bool = Field(True, description=(
        "Producers ask the broker for an idempotent session (a retried batch is written once). The "
        "local stack sets false with its broker on s3rver, whose idempotent sessions fail under "
        "concurrent producers (tansu 0.6); retries may then write a batch twice, which the DB writer "
        "stores once (docs/RELIABILITY.md)."))
    kafka_max_block_ms: int = Field(10_000, ge=0, description=(
        "How long a producer's send may wait: for the topic's metadata (the broker away; retried "
        "until KAFKA_DELIVERY_TIMEOUT_S) or for room in its buffer (then the image counts as failed)."))
    kafka_delivery_timeout_s: float = Field(120.0, gt=0, description=(
        "How long a producer keeps trying to deliver an image (broker away, leader moving) before it "
        "counts the image as failed."))
    max_message_bytes: int = Field(MAX_IMAGE_MESSAGE_BYTES, description=(
        "Largest message a consumer tries to decode (bigger ones are dead-lettered), and the largest "
        "image file a producer sends."))
    dlq_max_record_bytes: int = Field(1024 * 1024, ge=4096, description=(
        "Largest dead letter the consumers send: at most the DLQ topic's max.message.bytes and the "
        "producers' max_request_size (1 MiB each by default). A bigger one keeps the dlq.* headers only."))


class MongoSettings(ProjectSettings):
    """MongoDB, when STORE=mongodb (the default): the DB consumer, the DLQ tool, the dashboard and
    the experiments."""

    mongo_uri: SecretStr = Field(SecretStr("mongodb://127.0.0.1:27017"), description=(
        "MongoDB connection string (its password is printed masked). The local stack uses an external "
        "MongoDB when set."))
    mongo_database: str = Field("iot", description="Database of the pipeline.")
    mongo_collection: str = Field("images", description="Collection of the stored images and predictions.")
    mongo_timeout_ms: int = Field(5_000, description="Server selection and connect timeout.")
    # A hung (not dead) server must not block the DB consumer forever.
    mongo_socket_timeout_ms: int = Field(30_000, description=(
        "Longest wait for one operation; a write that times out is retried (upserts are idempotent)."))
    mongo_dlq_replays_collection: str = Field("dlq_replays", description=(
        "Where python -m consumers.dlq records its replays."))
    mongo_write_journal: bool = Field(True, description=(
        "The DB consumer's writes wait for the journal (j=true): an acknowledged write, whose Kafka "
        "offset is then committed, survives a mongod crash."))
    # w=0 (unacknowledged) would break at-least-once delivery.
    mongo_write_concern_w: Literal["majority"] | Annotated[int, Field(ge=1)] = Field(1, description=(
        "Write concern w of the DB consumer's writes: 1 (the primary) or \"majority\" on a replica set "
        "(survives a failover too). 0 is refused."))


def _store_name(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().lower() or "mongodb"
    return value


class StoreSettings(ProjectSettings):
    """Which store the images and predictions go to: every process that writes or reads them
    (the DB consumer, the DLQ tool, the dashboard, the experiments) and the local stack,
    which starts that store's server."""

    store: Annotated[Literal["mongodb", "postgres", "couchdb"], BeforeValidator(_store_name)] = Field(
        "mongodb", description=("The store: mongodb (MONGO_*), postgres (POSTGRES_*) or couchdb (COUCHDB_*), in "
                                "any case; empty: mongodb."))


class PostgresSettings(ProjectSettings):
    """PostgreSQL, when STORE=postgres: the table ``iot_image_data`` (docs/ARCHITECTURE.md)."""

    postgres_dsn: SecretStr | None = Field(None, description=(
        "libpq connection string or URI (postgresql://user:password@host:port/db; its password is "
        "printed masked). Set, it is used as it is and POSTGRES_HOST ... POSTGRES_PASSWORD are not read. "
        "The local stack uses an external PostgreSQL when this or POSTGRES_HOST is set."))
    postgres_host: str = Field("127.0.0.1", description="Server host, without POSTGRES_DSN.")
    postgres_port: int = Field(5432, ge=1, le=65535, description="Server port, without POSTGRES_DSN.")
    postgres_db: str = Field("iot", min_length=1, description="Database, without POSTGRES_DSN.")
    postgres_user: str = Field("iot", min_length=1, description="User, without POSTGRES_DSN.")
    postgres_password: SecretStr | None = Field(None, description=(
        "Password, without POSTGRES_DSN (a secret: printed masked). Unset: none (or ~/.pgpass)."))
    postgres_connect_timeout_s: int = Field(5, ge=1, description="Connect timeout (libpq's connect_timeout).")
    # A hung (not dead) server must not block the DB consumer forever.
    postgres_statement_timeout_ms: int = Field(30_000, ge=0, description=(
        "Longest wait for one statement (statement_timeout); a write that times out is retried "
        "(upserts are idempotent). 0: none."))

    @field_validator("postgres_dsn")
    @classmethod
    def _dsn(cls, value: SecretStr | None) -> SecretStr | None:
        raw = value.get_secret_value().strip() if value is not None else ""
        if value is not None and raw and not (raw.startswith(("postgresql://", "postgres://")) or "=" in raw):
            raise ValueError("expected a postgresql:// URI or key=value pairs")
        return value if raw else None


# CouchDB's rule for database names (docs.couchdb.org, PUT /{db}).
_COUCH_DB_NAME = r"^[a-z][a-z0-9_$()+/-]*$"


class CouchSettings(ProjectSettings):
    """CouchDB, when STORE=couchdb: the database ``img_db``, one document per image, reached through
    CouchDB's HTTP API (docs/ARCHITECTURE.md)."""

    couchdb_url: SecretStr = Field(SecretStr("http://127.0.0.1:5984"), description=(
        "CouchDB's HTTP API, http(s)://host:port (a user:password@ in it is used and printed masked). "
        "The local stack uses an external CouchDB when set."))
    couchdb_user: SecretStr | None = Field(None, description=(
        "User name of HTTP basic authentication (a secret: printed masked). Unset: the URL's, else none "
        "(a server in admin party)."))
    couchdb_password: SecretStr | None = Field(None, description=(
        "Password of COUCHDB_USER (a secret: printed masked)."))
    couchdb_database: str = Field("img_db", pattern=_COUCH_DB_NAME, description=(
        "Database of the stored images and predictions (created by the DB consumer if missing)."))
    couchdb_dlq_replays_database: str = Field("img_db_dlq_replays", pattern=_COUCH_DB_NAME, description=(
        "Where python -m consumers.dlq records its replays."))
    couchdb_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of every request.")
    # A hung (not dead) server must not block the DB consumer forever.
    couchdb_timeout_s: float = Field(30.0, gt=0, description=(
        "Longest wait for one answer; a write that times out is retried (merging into the stored "
        "document makes a second write of the same records change nothing)."))

    @field_validator("couchdb_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        if not raw.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return SecretStr(raw.rstrip("/"))


class DbWriterSettings(ProjectSettings):
    """The DB consumer (consumers/db.py)."""

    db_max_records: int = Field(500, ge=1, description=(
        "Largest poll, and so largest store write (one unordered bulk_write, one PostgreSQL "
        "transaction), per offset commit (--max-records). 1 is "
        "the per-message design (one write and one commit per message)."))


class RetentionSettings(ProjectSettings):
    """How long the store keeps an image (docs/RELIABILITY.md, "Data lifecycle"): applied by the DB
    consumer every STORE_RETENTION_INTERVAL_S, or once by ``python -m consumers.retention run``."""

    store_retention_days: float = Field(0.0, ge=0, description=(
        "Images first stored more than this many days ago are deleted from the store (an image's age "
        "is its stored_at, else its prediction_stored_at). 0: kept forever."))
    store_archive_dir: str = Field("", description=(
        "Directory the expired images are archived to before they are deleted (JSON Lines, the image "
        "file in base64; python -m consumers.retention archive list|read). Empty: deleted unarchived."))
    store_retention_interval_s: float = Field(3600.0, gt=0, description=(
        "Seconds between two applications of STORE_RETENTION_DAYS by the DB consumer."))
    store_retention_batch: int = Field(500, ge=1, description=(
        "Documents read, archived and deleted at a time."))


class DlqToolSettings(ProjectSettings):
    """``python -m consumers.dlq`` (list, show, replay the dead letters)."""

    dlq_read_idle_ms: int = Field(10_000, ge=1, description=(
        "Reading the DLQ ends at the end offsets asked at the start, or after this long without a "
        "record (a broker whose end offsets are approximate, as the embedded one's are) (--idle-ms)."))


class InferenceClientSettings(ProjectSettings):
    """The inference consumer: how it reaches the service and how it batches."""

    inference_mode: Literal["service", "embedded"] = Field("service", description=(
        "service: the consumer sends its batches to the inference service (INFERENCE_URL). embedded: it "
        "runs the service's model in its own process, with the service's settings (MODEL_ENGINE, "
        "MODEL_WEIGHTS, MAX_REQUEST_IMAGES ...), the same answers and checks, no HTTP hop."))
    inference_url: str = Field("http://127.0.0.1:8000", description=(
        "Inference service URL(s), comma-separated to spread the batches (--inference-url). The local "
        "stack uses an external service when set."))
    inference_token: SecretStr | None = Field(None, description=(
        "Bearer token sent to the service (the service's INFERENCE_TOKEN). Unset: none."))
    # Longer than the service's INFERENCE_REQUEST_TIMEOUT_S, so the service gives up first
    # (503) and drops the work; the other way round the consumer resends batches the service
    # keeps computing (tests/unit/test_settings.py).
    inference_timeout_s: float = Field(90.0, gt=0, description=(
        "How long the consumer waits for one /v1/predict answer before it resends the batch; keep it "
        "above the service's INFERENCE_REQUEST_TIMEOUT_S."))
    # The model's sweet spot: ResNet50 on CPU is flat in images/s from 32 to 64, with the most
    # images per HTTP/JSON/commit round (docs/PERFORMANCE.md).
    predict_batch_images: int = Field(64, ge=1, description=(
        "Most images per /v1/predict request (--batch-size); at most the service's MAX_REQUEST_IMAGES."))
    # Short: batches grow by themselves under load (images pile up while the model runs the
    # previous batch); 50 ms doubled p99 at half load.
    predict_batch_wait_ms: int = Field(10, ge=0, description=(
        "How long to wait for more images after the first of a batch, counted from when that image "
        "was produced (its record's CreateTime) (--batch-wait-ms); 0 sends at once."))
    retry_initial_s: float = Field(0.5, description="First pause before a failed request is retried.")
    retry_max_s: float = Field(10.0, description="Longest pause between retries (the pause doubles).")


class DatasetSettings(ProjectSettings):
    """What the cameras send: the producers, the demo, the benchmark and inference.train."""

    dataset: Literal["cifar10", "cifar100", "synthetic", "folder"] = Field("cifar10", description=(
        "Images the cameras send (--dataset): cifar10, cifar100, synthetic (generated, no labels) or "
        "folder (DATASET_SOURCE's JPEG/PNG files as they are, labelled by sub-folder)."))
    dataset_source: str = Field("", description=(
        "A directory in the official 'python version' layout, a local tarball or a URL; for "
        "DATASET=folder a directory of images (--dataset-source). Empty: the official URL."))
    dataset_split: Literal["test", "train"] = Field("test", description="Dataset split to send (--split).")


class ProducerSettings(ProjectSettings):
    """A producer (``python -m producer``): each field has the flag of the same name."""

    producer_id: str | None = Field(None, description="Producer id (--producer-id). Unset: a new random one.")
    count: int = Field(300, ge=0, description="Images to send (--count).")
    rate: float = Field(20.0, gt=0, description="Images per second (--rate).")
    duration: float | None = Field(None, description=(
        "Seconds to send for, instead of COUNT: COUNT becomes DURATION x RATE (--duration)."))
    devices: int = Field(4, ge=1, description=(
        "Simulated cameras (--devices); each is a Kafka key, so a camera's images stay in order."))
    result_timeout_s: float = Field(120.0, description="Seconds to wait for the last results (--result-timeout).")
    image_schema: int = Field(2, ge=1, le=2, description=(
        "Image message written (common/schema.py): 2 = the image file as the record value, metadata in "
        "headers; 1 = the JSON message of older releases. Consumers read both: upgrade them first."))


class MetricsSettings(ProjectSettings):
    """Prometheus metrics of a consumer or a producer (common/metrics.py, docs/OBSERVABILITY.md).
    The inference service serves its own on its HTTP port (``/metrics``)."""

    metrics_port: int = Field(0, ge=0, le=65535, description=(
        "Port of the process's /metrics endpoint; 0 or empty: no endpoint (the metrics are still "
        "counted unless METRICS_ENABLED is false)."))
    # Exposing the metrics is a deliberate choice (the VMs bind the host's address, firewalled).
    metrics_bind: str = Field("127.0.0.1", description="Address of the /metrics endpoint. Loopback by default.")
    metrics_enabled: bool = Field(True, description="False: every metric update is skipped (to measure their cost).")
    metrics_hold_s: float = Field(0.0, ge=0, description=(
        "A producer waits at most this long for a first scrape before sending, and keeps serving "
        "/metrics after its run until one scrape read the final counts; 0: no waiting."))

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value):
        return 0 if value is None or (isinstance(value, str) and not value.strip()) else value


class LogSettings(ProjectSettings):
    """Logging of every Python process (common/log.py)."""

    log_level: Annotated[Literal["CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET"],
                         BeforeValidator(level_name)] = Field("INFO", description=(
        "Level of the process's log, in any case (Python's level names; the Gunicorn master of the "
        "inference service takes the five of GunicornSettings). Empty: INFO."))


class CacheSettings(ProjectSettings):
    """Where downloads are kept: the datasets (common/dataset.py) and the ImageNet weights
    (inference/model.py).  Both variables are conventions of other tools too: Keras reads
    KERAS_HOME itself, and XDG_CACHE_HOME is the freedesktop cache directory."""

    keras_home: str | None = Field(None, description=(
        "Keras' home: downloaded datasets in <KERAS_HOME>/datasets, the ImageNet weights in "
        "<KERAS_HOME>/models. Unset or empty: ~/.keras (the weights are also looked for in /tmp/.keras)."))
    xdg_cache_home: str | None = Field(None, description=(
        "Cache directory: splits read from a dataset tarball are kept as arrays under "
        "<XDG_CACHE_HOME>/iot-pipeline/datasets. Unset or empty: ~/.cache."))


# The order of docs/SETTINGS.md; settings_env looks a field up in this order.
SETTINGS_GROUPS: tuple[type[ProjectSettings], ...] = (
    KafkaSettings, StoreSettings, MongoSettings, PostgresSettings, CouchSettings, DbWriterSettings, RetentionSettings, DlqToolSettings, InferenceClientSettings, DatasetSettings,
    ProducerSettings, ServiceSettings, GunicornSettings, MetricsSettings, DashboardSettings, LogSettings,
    CacheSettings, StackSettings, DemoSettings, FleetSettings, StackPlumbingSettings, SuiteSettings, RehearsalSettings)


def settings_env(**values: Any) -> dict[str, str]:
    """Environment variables for another process, from typed values: each keyword is a
    settings field (``predict_batch_images=1``), checked to exist and validated against its
    field, so an override with a typo or a bad value fails here, not in the child."""
    env = {}
    for name, value in values.items():
        group = next((g for g in SETTINGS_GROUPS if name in g.model_fields), None)
        if group is None:
            raise SettingsError(f"{name}: no such setting")
        validated = getattr(with_flags(group, **{name: value}), name)
        env[env_name(name)] = str(validated.get_secret_value() if isinstance(validated, SecretStr)
                                  else validated)
    return env

