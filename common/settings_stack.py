"""Settings of the local stack (stack/), the demo and the experiments' producer fleets.

Imported through :mod:`common.settings`.  They live in common, below the stack, because
the consumers read :class:`StackPlumbingSettings` and every layer may import common.

Here an empty variable means its default (``env_ignore_empty``): shells and make pass a
variable they were not given through as an empty one.
"""

from __future__ import annotations

import re

from typing import Literal

from pydantic import Field, field_validator

from common.settings_base import CONFIG, ProjectSettings

_CONFIG = {**CONFIG, "env_ignore_empty": True}
_PORT = {"ge": 0, "le": 65535}


class StackSettings(ProjectSettings):
    """The local stack: ``python -m stack`` and its supervisor (stack/), and the demo and the
    experiments that bring it up."""

    model_config = _CONFIG

    stack_dir: str | None = Field(None, description=(
        "Directory of the stack's state (stack.env, pids, logs, data). Unset: .run/ in the checkout."))
    stack_kafka_port: int = Field(9092, **_PORT, description=(
        "Port of the embedded Kafka broker when it is free, else any free port; 0: any free port."))
    stack_broker_storage: Literal["memory", "s3"] = Field("memory", description=(
        "Where the embedded broker (tansu) keeps topics, records and committed offsets: memory (lost "
        "when the broker stops, so its death stops the stack), or s3, on disk through the stack's "
        "s3rver (.run/data/broker, kept across restarts; the broker is restarted like any component, "
        "at a cost in latency and CPU). docs/RELIABILITY.md, \"The local broker's storage\"."))
    stack_broker_retention: bool = Field(True, description=(
        "With STACK_BROKER_STORAGE=s3, delete the record batches every consumer group has committed "
        "past (stack/broker_retention.py); false: keep every batch, and fetches slow down as partitions "
        "grow. Unlike Apache Kafka's time-based retention, a new group cannot read from the start what "
        "every group has read."))
    stack_broker_retention_s: float = Field(60.0, ge=0, description=(
        "How old a batch every consumer group has committed past must be before it is deleted: it covers "
        "readers without a group (a producer's result listener) that lag."))
    stack_broker_retention_interval_s: float = Field(10.0, gt=0, description=(
        "Seconds between two passes of the embedded broker's retention."))
    stack_s3rver_port: int = Field(4568, **_PORT, description=(
        "Port of the s3rver that stores the embedded broker's data (STACK_BROKER_STORAGE=s3) when it "
        "is free, else any free port; 0: any free port."))
    stack_mongo_port: int = Field(27017, **_PORT, description=(
        "Port of the embedded MongoDB server when it is free, else any free port; 0: any free port."))
    stack_postgres_port: int = Field(5432, **_PORT, description=(
        "Port of the stack's PostgreSQL (STORE=postgres) when it is free, else any free port; 0: any free port."))
    stack_postgres_user: str = Field("postgres", min_length=1, description=(
        "System user the stack's PostgreSQL runs as when the stack runs as root (PostgreSQL refuses "
        "root; Debian's package creates postgres); it must be able to reach STACK_DIR. Run by any "
        "other user, the server runs as that user."))
    stack_postgres_bin_dir: str | None = Field(None, description=(
        "Directory of PostgreSQL's server programs (initdb, postgres). Unset: the newest "
        "/usr/lib/postgresql/<version>/bin (Debian's package), else those on PATH."))
    stack_couchdb_port: int = Field(5984, **_PORT, description=(
        "Port of the stack's pouchdb-server (STORE=couchdb, CouchDB's HTTP API) when it is free, else any "
        "free port; 0: any free port."))
    stack_pouchdb_server: str | None = Field(None, description=(
        "The pouchdb-server executable the stack runs with STORE=couchdb. Unset: the one make "
        "pouchdb-server installs (pouchdb/node_modules/.bin), else pouchdb-server on PATH."))
    stack_inference_port: int = Field(8000, **_PORT, description=(
        "Port of the inference service when it is free, else any free port; 0: any free port."))
    stack_inference_ready_s: float = Field(300.0, gt=0, description=(
        "How long the service may take to load its model and answer /readyz."))
    stack_inference_consumers: int = Field(1, ge=1, description=(
        "Inference consumers in the group: above 1, one gathers and sends while another waits for its "
        "answer, and the service merges their requests."))
    stack_prometheus: bool = Field(True, description=(
        "Start Prometheus, when installed, scraping every component; false: none."))
    prometheus_binary: str | None = Field(None, description="The prometheus executable. Unset: prometheus on PATH.")
    stack_prometheus_port: int = Field(0, **_PORT, description="Port of Prometheus; 0: any free port.")
    stack_scrape_interval: str = Field("5s", description=(
        "Prometheus' scrape and rule evaluation interval (a Prometheus duration: 500ms, 5s, 1m)."))
    stack_dashboard: bool = Field(True, description="Start the live dashboard (python -m dashboard); false: none.")
    stack_dashboard_port: int = Field(0, **_PORT, description="Port of the dashboard; 0: any free port.")
    stack_up_timeout_s: float = Field(420.0, gt=0, description=(
        "How long make demo and make experiment wait for the stack to come up (python -m stack up "
        "takes --timeout)."))

    @field_validator("stack_scrape_interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not re.fullmatch(r"([0-9]+(ms|[smhdwy]))+", value):
            raise ValueError("expected a Prometheus duration such as 500ms, 5s or 1m")
        return value


class DemoSettings(ProjectSettings):
    """``make demo`` (``python -m experiments.demo``): its one producer's run."""

    model_config = _CONFIG

    demo_count: int = Field(300, ge=1, description="Images the demo's producer sends (--count).")
    demo_rate: float = Field(20.0, gt=0, description="Images per second of the demo's producer (--rate).")


class FleetSettings(ProjectSettings):
    """The producer fleets of the demo, the experiments and the benchmark (experiments/fleet.py)."""

    model_config = _CONFIG

    producer_metrics_ports: str = Field("", description=(
        "Comma-separated ports: the i-th producer of a fleet serves /metrics on the i-th, producers "
        "beyond the list serve none. The local stack writes its pool to stack.env; the VMs set theirs."))

    @field_validator("producer_metrics_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if not part.isdigit() or not 0 < int(part) <= 65535:
                raise ValueError(f"{part!r} is not a port: expected comma-separated ports")
        return value

    def ports(self) -> list[int]:
        return [int(p) for p in self.producer_metrics_ports.split(",") if p.strip()]


class StackPlumbingSettings(ProjectSettings):
    """Variables the local stack's supervisor sets for its children, not meant for people.

    Decision: declared like every other setting rather than read raw, so that the reference
    (docs/SETTINGS.md) lists every variable a process reads and a bad value is refused the
    same way; their descriptions say who sets them."""

    model_config = _CONFIG

    ready_file: str | None = Field(None, description=(
        "Set by the local stack for each consumer: a file the consumer creates once it owns partitions, "
        "which the supervisor waits for. Unset: none."))
