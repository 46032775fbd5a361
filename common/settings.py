"""Typed settings for every component, read from the environment.

Each component composes the groups it needs and lets its CLI flags override
them through :func:`with_flags`, which validates flags exactly like the
environment (``--batch-size 0`` is an error, not a batch of nothing).  Environment variable names are the
field names in upper case (``KAFKA_BOOTSTRAP_SERVERS``, ``MONGO_URI`` ...), which
is also what ``.run/stack.env`` and the Ansible environment files write.

Every entry point prints its effective settings at start through
:func:`describe`, with secrets masked.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONFIG = SettingsConfigDict(env_file=None, extra="forbid", case_sensitive=False)


class KafkaSettings(BaseSettings):
    model_config = _CONFIG

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    images_topic: str = "iot-images"
    results_topic: str = "iot-inference"
    dlq_topic: str = "iot-dlq"
    images_partitions: int = Field(3, ge=1)
    results_partitions: int = Field(3, ge=1)
    # A producer reads only the results partition its id hashes to (results are keyed by
    # producer id).  True: every partition, for results published by inference consumers
    # older than that (they keyed by device): consumers upgrade before producers.
    results_read_all: bool = False
    # Security (the deployment's SASL/SCRAM-over-TLS switch sets these).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    # Group membership: the embedded broker takes about half of the session
    # timeout to complete a join, so keep it modest; real Kafka is unaffected.
    kafka_session_timeout_ms: int = 6_000
    kafka_heartbeat_interval_ms: int = 1_000
    kafka_max_poll_interval_ms: int = 300_000
    # Producer batching: linger lets one request carry many images.  20 ms rather than
    # 5: at 75 images/s per producer a 5 ms linger sends one image per request, and
    # the broker, the producers and the DB consumer pay per request (+10 % pipeline
    # throughput on 2 cores, docs/PERFORMANCE.md); it adds at most 20 ms, to the
    # producer's send only (the inference consumer flushes its results at once).
    kafka_linger_ms: int = 20
    # Consumers' fetch long-poll: the broker answers as soon as one byte is there
    # (fetch.min.bytes 1), so this costs no latency; it only bounds how often an
    # idle consumer asks.  10 ms (it used to follow PREDICT_BATCH_WAIT_MS) made an idle
    # consumer send 100 fetches/s and the broker burn CPU answering them.
    kafka_fetch_max_wait_ms: int = Field(100, ge=1)
    kafka_producer_batch_bytes: int = 256 * 1024
    # How long a producer keeps trying to deliver an image (broker away, leader moving)
    # before it counts the image as failed: kafka-python's delivery.timeout.ms, and the
    # producer's own retries while the broker cannot be reached at all.
    kafka_delivery_timeout_s: float = Field(120.0, gt=0)
    # Largest message a consumer will try to decode; bigger ones are dead-lettered.
    max_message_bytes: int = 256 * 1024
    # Largest dead letter the consumers send (record batch bytes, kafka-python's estimate): at
    # most the DLQ topic's max.message.bytes and the producers' max_request_size (both 1 MiB by
    # default).  A dead letter over it keeps the dlq.* headers only (docs/ARCHITECTURE.md).
    dlq_max_record_bytes: int = Field(1024 * 1024, ge=4096)


class MongoSettings(BaseSettings):
    model_config = _CONFIG

    mongo_uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongo_database: str = "iot"
    mongo_collection: str = "images"
    mongo_timeout_ms: int = 5_000
    # A hung (not dead) server must not block the DB consumer forever: the write
    # times out and is retried (upserts are idempotent).
    mongo_socket_timeout_ms: int = 30_000
    # python -m consumers.dlq records its replays here (docs/ARCHITECTURE.md, dead letters).
    mongo_dlq_replays_collection: str = "dlq_replays"
    # Write concern of the DB consumer's writes (consumers/db.py), which commits the Kafka
    # offsets once MongoDB acknowledged them: j=true waits for the journal, so an
    # acknowledged write survives a mongod crash.  W: 1 (the primary); "majority" on a
    # replica set (the VMs run a single-node one), so it survives a failover too.  w=0
    # (unacknowledged) would break at-least-once delivery and is refused.
    mongo_write_journal: bool = True
    mongo_write_concern_w: Literal["majority"] | Annotated[int, Field(ge=1)] = 1


class DbWriterSettings(BaseSettings):
    """The DB consumer (consumers/db.py)."""

    model_config = _CONFIG

    # Largest poll, and so largest unordered bulk_write, per commit.  1 is the
    # per-message design (one write + one commit per message), the benchmark's baseline.
    db_max_records: int = Field(500, ge=1)


class DlqToolSettings(BaseSettings):
    """``python -m consumers.dlq`` (list, show, replay the dead letters)."""

    model_config = _CONFIG

    # Reading the DLQ ends at the end offsets asked at the start, or after this long
    # without a record (a broker whose end offsets are approximate, as tansu's are).
    dlq_read_idle_ms: int = Field(10_000, ge=1)


class InferenceClientSettings(BaseSettings):
    """How the inference consumer reaches the service (comma-separated URLs spread the load)."""

    model_config = _CONFIG

    inference_url: str = "http://127.0.0.1:8000"
    inference_token: SecretStr | None = None
    # How long the consumer waits for one /v1/predict answer before it resends the batch.
    # Rule: longer than the service's INFERENCE_REQUEST_TIMEOUT_S (60 s), so the service
    # gives up first (503) and drops the work it gave up on; the other way round the
    # consumer resends batches that the service keeps computing (tests/unit/test_settings.py).
    inference_timeout_s: float = Field(90.0, gt=0)
    # Micro-batching (docs/PERFORMANCE.md): up to PREDICT_BATCH_IMAGES images per request, the
    # model's sweet spot (ResNet50 on CPU: images/s flat from 32 to 64, the most
    # images per HTTP/JSON/commit round).  PREDICT_BATCH_WAIT_MS is how long to wait for more
    # after the first, counted from when the first was produced (its record's CreateTime,
    # consumers.batching.gather): short, because batches grow by themselves under load
    # (images pile up while the model runs the previous batch); 50 ms doubled p99 at half load.
    predict_batch_images: int = Field(64, ge=1)
    predict_batch_wait_ms: int = Field(10, ge=0)
    retry_initial_s: float = 0.5
    retry_max_s: float = 10.0


class DatasetSettings(BaseSettings):
    model_config = _CONFIG

    dataset: Literal["cifar10", "cifar100", "synthetic", "folder"] = "cifar10"
    # A directory in the official "python version" layout, a local tarball or a URL.
    # Empty means the official URL for the chosen dataset.  DATASET=folder: a directory of
    # JPEG/PNG files of any size, sent as they are (label = the file's sub-folder's name).
    dataset_source: str = ""
    dataset_split: Literal["test", "train"] = "test"


class ProducerSettings(BaseSettings):
    model_config = _CONFIG

    producer_id: str | None = None
    count: int = Field(300, ge=0)
    rate: float = Field(20.0, gt=0)
    duration: float | None = None
    devices: int = Field(4, ge=1)
    result_timeout_s: float = 120.0
    # Image message schema the producer writes (common/schema.py): 2 = the image file as the
    # record value, metadata in headers (no base64, no JSON); 1 = the JSON message of
    # before.  Consumers read both: during an upgrade, upgrade them first, or keep 1.
    image_schema: int = Field(2, ge=1, le=2)


class ServiceSettings(BaseSettings):
    """Settings of the Flask/Gunicorn inference service."""

    model_config = _CONFIG

    model_weights: str = "auto"  # auto | imagenet | random | path to a weights file
    model_input_size: int | None = None  # default: 224 for imagenet, 32 otherwise
    # bfloat16: the same weights computed in bfloat16 (oneDNN on AVX512_BF16/AMX CPUs);
    # 1.31x at batch 16 at 224 px here, predictions within ~1e-2 (docs/PERFORMANCE.md).
    model_precision: Literal["float32", "bfloat16"] = "float32"
    # The runtime that runs the model: tensorflow (the reference), or the same Keras model
    # converted at load by ONNX Runtime / OpenVINO (inference/runtimes.py; optional packages:
    # requirements/runtime-<engine>.txt; float32 only; docs/PERFORMANCE.md has the figures:
    # openvino 1.5-2.8x at 224 px with TF's labels; onnxruntime's conversion needs ~7-9 GiB).
    model_engine: Literal["tensorflow", "onnxruntime", "openvino"] = "tensorflow"
    max_request_images: int = Field(128, ge=1)
    # One image of /v1/predict (PNG or JPEG, any width and height): at most this many bytes
    # (the file, base64 aside) and this many pixels, read from the header before anything is
    # decoded (a decompression bomb gets a per-image error).  4096x4096 by default.
    max_image_bytes: int = Field(1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    # Largest request body (413 above it, before anything is parsed).  None: derived
    # (request_bytes_limit): MAX_REQUEST_IMAGES x (the base64 of MAX_IMAGE_BYTES + 1 KiB of
    # id and framing) + 64 KiB, capped at 64 MiB, so a worker's memory per request is bounded
    # by what it may legitimately receive.  With the defaults the cap decides: 64 MiB holds
    # 47 images of 1 MiB in JSON (63 in multipart), 128 of up to 370 KiB; set it to raise it.
    max_request_bytes: int | None = Field(None, ge=1024)
    inference_token: SecretStr | None = None
    # Server-side dynamic batching: requests arriving within this window are merged.
    model_batch_max_images: int = Field(64, ge=1)
    model_batch_delay_ms: float = Field(2.0, ge=0)
    tf_intra_op_threads: int = 0  # 0: TensorFlow decides
    tf_inter_op_threads: int = 0
    # Test hook (off by default): extra seconds added to every batch.
    inference_slowdown_s: float = 0.0
    # auto/imagenet: every socket operation of the weights download is bounded by
    # this, so a host without internet falls back (auto) or fails (imagenet) fast.
    weights_download_timeout_s: float = Field(3.0, gt=0)
    # Backpressure: a request that would push more images than this into the
    # dynamic batcher's queue gets 503 + Retry-After (0 = unbounded).
    max_queue_images: int = Field(1024, ge=0)
    # How long a request waits for its batches before answering 503; its chunks not run
    # by then are dropped from the dynamic batcher's queue (inference/batcher.py).  Rule:
    # shorter than the consumers' INFERENCE_TIMEOUT_S (90 s), so the service gives up
    # before its client does and never computes a batch the client already resends.
    inference_request_timeout_s: float = Field(60.0, gt=0)


REQUEST_BYTES_CAP = 64 * 1024 * 1024


def request_bytes_limit(s: "ServiceSettings") -> int:
    """The service's body limit: MAX_REQUEST_BYTES, else derived from MAX_REQUEST_IMAGES and
    MAX_IMAGE_BYTES (base64: 4/3 of it, plus 1 KiB per image), capped at 64 MiB."""
    if s.max_request_bytes:
        return s.max_request_bytes
    per_image = 4 * ((s.max_image_bytes + 2) // 3) + 1024
    return min(s.max_request_images * per_image + 64 * 1024, REQUEST_BYTES_CAP)


class GunicornSettings(BaseSettings):
    """The Gunicorn master's knobs (inference/gunicorn.conf.py explains each choice)."""

    model_config = _CONFIG

    # Loopback by default: the service has no TLS and the bearer token is optional.
    inference_bind: str = "127.0.0.1:8000"
    gunicorn_workers: int = Field(1, ge=1)
    gunicorn_threads: int = Field(8, ge=1)
    gunicorn_timeout: int = Field(60, ge=1)
    gunicorn_graceful_timeout: int = Field(30, ge=0)
    gunicorn_keepalive: int = Field(5, ge=0)
    gunicorn_max_requests: int = Field(0, ge=0)  # 0: no worker recycling
    gunicorn_max_requests_jitter: int = Field(0, ge=0)
    gunicorn_backlog: int = Field(128, ge=1)
    gunicorn_control_socket: str | None = None  # None: gunicornc's control socket off
    gunicorn_accesslog: str | None = None  # None: stderr
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL",
                       "debug", "info", "warning", "error", "critical"] = "INFO"


class MetricsSettings(BaseSettings):
    """Prometheus metrics of a consumer or a producer (common/metrics.py, docs/OBSERVABILITY.md).
    The inference service serves its own on /v1's port (``/metrics``)."""

    model_config = _CONFIG

    # Port of the process's /metrics HTTP endpoint; 0 or empty: no endpoint (the metrics
    # are still counted unless METRICS_ENABLED is false).
    metrics_port: int = Field(0, ge=0, le=65535)
    # Loopback by default: the metrics say how busy the pipeline is and nothing more, but
    # exposing them is a deliberate choice (the VMs bind the host's address, firewalled).
    metrics_bind: str = "127.0.0.1"
    # Off: every metric update is skipped (to measure what the metrics cost).
    metrics_enabled: bool = True
    # A producer (a batch job) waits for a first scrape before sending (its counters seen
    # at zero, so rate() covers the whole run) and keeps serving /metrics after its run
    # until one scrape has read the final counts, each at most this long; 0: no waiting.
    metrics_hold_s: float = Field(0.0, ge=0)

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value):
        return 0 if value is None or (isinstance(value, str) and not value.strip()) else value


class DashboardSettings(BaseSettings):
    """The live dashboard (``python -m dashboard``): reads MongoDB and Prometheus only."""

    model_config = _CONFIG

    # Loopback by default.  Any other address needs DASHBOARD_TOKEN (it refuses to start
    # without one): the page shows the pipeline's images.
    dashboard_bind: str = "127.0.0.1:8050"
    # Bearer token of the dashboard (like INFERENCE_TOKEN): the page's requests carry it
    # (given once as /?token=..., kept in an HttpOnly cookie).  None: no token.
    dashboard_token: SecretStr | None = None
    prometheus_url: str = "http://127.0.0.1:9090"
    dashboard_recent_images: int = Field(12, ge=1, le=100)
    dashboard_refresh_ms: int = Field(2000, ge=200)


_SECRET_IN_URI = re.compile(r"(//[^:/@]+:)([^@]+)(@)")


def mask_uris(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it hidden."""
    return _SECRET_IN_URI.sub(r"\1***\3", text)


def mask(value: Any) -> Any:
    """Mask a secret for printing; passwords inside URIs are hidden too."""
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        return _SECRET_IN_URI.sub(r"\1***\3", raw) if "://" in raw else "***"
    return value


# Old names of renamed settings: each batch setting now says what it batches.  A
# variable under its old name is ignored, and every entry point says so at start.
RENAMED = {"BATCH_SIZE": "PREDICT_BATCH_IMAGES", "BATCH_WAIT_MS": "PREDICT_BATCH_WAIT_MS",
           "KAFKA_BATCH_SIZE": "KAFKA_PRODUCER_BATCH_BYTES", "MAX_BATCH": "MAX_REQUEST_IMAGES",
           "DYNAMIC_BATCH_MAX": "MODEL_BATCH_MAX_IMAGES", "DYNAMIC_BATCH_DELAY_MS": "MODEL_BATCH_DELAY_MS"}


def describe(*groups: BaseSettings) -> str:
    """One line per effective setting, secrets masked: printed by every entry point."""
    lines = []
    for group in groups:
        for name in type(group).model_fields:
            lines.append(f"  {name.upper()}={mask(getattr(group, name))}")
    lines += [f"  WARNING: {old} is no longer read: use {new}"
              for old, new in RENAMED.items() if old in os.environ]
    return "effective settings:\n" + "\n".join(lines)


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


SETTINGS_GROUPS: tuple[type[BaseSettings], ...] = ()  # filled in below the classes


def settings_env(**values: Any) -> dict[str, str]:
    """Environment variables for another process, from typed values: each keyword is a
    settings field (``predict_batch_images=1``), checked to exist and validated against its
    field, so an override with a typo or a bad value fails here, not in the child."""
    env = {}
    for name, value in values.items():
        group = next((g for g in SETTINGS_GROUPS if name in g.model_fields), None)
        if group is None:
            raise ValueError(f"{name}: no such setting")
        validated = getattr(with_flags(group, **{name: value}), name)
        env[name.upper()] = str(validated.get_secret_value() if isinstance(validated, SecretStr)
                                else validated)
    return env


def with_flags(cls: type[BaseSettings], parser=None, **flags: Any) -> BaseSettings:
    """``cls`` read from the environment with the CLI ``flags`` that were given (not None)
    on top, validated together.  An invalid value ends the program through
    ``parser.error`` (usage + message, exit status 2) when a parser is given, else
    raises ``ValueError``; it is never accepted silently."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or cls.__name__}"
                             f"{'=' + repr(e['input']) if e['loc'] else ''}: {e['msg']}"
                             for e in exc.errors())
        message = f"invalid setting: {problems}"
        if parser is not None:
            parser.error(message)
        raise ValueError(message) from None


SETTINGS_GROUPS = (KafkaSettings, MongoSettings, DbWriterSettings, DlqToolSettings, InferenceClientSettings,
                   DatasetSettings, ProducerSettings, ServiceSettings, GunicornSettings, MetricsSettings,
                   DashboardSettings)
