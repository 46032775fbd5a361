"""Retention for the embedded broker's S3 storage: delete the record batches that every
consumer group has read (``python -m stack.broker_retention``, a component of the stack
with STACK_BROKER_STORAGE=s3).

Why: tansu 0.6's S3 engine keeps every batch for ever (it has no retention, and its
DeleteRecords is not implemented), and it answers each fetch by listing every batch of the
partition, giving up at the fetch's max wait (stack/broker.py).  A partition that only
grows makes every fetch slower until consumers get nothing (docs/RELIABILITY.md, "A soak
on the broker's S3 storage").

What is deleted, every ``STACK_BROKER_RETENTION_INTERVAL_S``, through s3rver's S3 API (so
s3rver's listing index stays true): a batch of topic t, partition p whose records all lie
below the committed offset of *every* consumer group that has committed on t (the next
batch starts at or below it), and whose object is older than ``STACK_BROKER_RETENTION_S``.

* tansu answers a fetch at offset o with the batch that holds o and the ones after it, and
  a group's consumer never fetches below its committed offset, so no group reads those
  batches again.  The batch holding a committed offset stays: a consumer restarted there
  reads the rest of it.
* A partition where one of the topic's groups has not committed yet is left whole (that
  group starts from the earliest offset).  A topic no group commits on (the dead-letter
  topic, read by the replay tool without a group) is never pruned.
* Readers without a group (a producer's result listener) read as records arrive; the age
  covers one that lags.
* A group whose newest commit on a topic is older than ``GROUP_EXPIRY_S`` no longer holds
  that topic's batches: Apache Kafka expires a group's offsets after 7 days the same way
  (``offsets.retention.minutes``), so a group that is gone for good does not pin the
  topic.  ``make clean`` removes everything.

The ``low`` of tansu's watermark is left as it is: tansu writes that object with
conditional writes, and its earliest offset is found by listing the batches anyway.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
from botocore.config import Config

from common.lifecycle import stop_event
from common.log import setup_logging
from common.settings import StackPlumbingSettings, StackSettings
from stack.broker import CLUSTER

log = logging.getLogger("stack.broker_retention")

GROUP_EXPIRY_S = 7 * 24 * 3600
_OFFSETS = re.compile(r"groups/consumers/(?P<group>[^/]+)/offsets/(?P<topic>[^/]+)/partitions/(?P<partition>\d+)\.json$")
_BATCH = re.compile(r"/records/(?P<offset>\d{20})\.batch$")


@dataclass(frozen=True)
class Commit:
    group: str
    topic: str
    partition: int
    offset: int
    at: datetime


def floors(commits: list[Commit], now: datetime) -> dict[tuple[str, int], int]:
    """Per (topic, partition): the lowest offset any of the topic's groups has committed, for
    the partitions where each of them has committed (a group without a commit there would
    start from the earliest offset).  Groups whose newest commit on the topic is older than
    GROUP_EXPIRY_S are left out."""
    by_topic: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    newest: dict[tuple[str, str], datetime] = {}
    for c in commits:
        by_topic[c.topic][c.group][c.partition] = c.offset
        newest[c.topic, c.group] = max(newest.get((c.topic, c.group), c.at), c.at)
    result: dict[tuple[str, int], int] = {}
    for topic, groups in by_topic.items():
        live = {g: parts for g, parts in groups.items()
                if (now - newest[topic, g]).total_seconds() < GROUP_EXPIRY_S}
        if not live:
            continue
        partitions = set.intersection(*(set(parts) for parts in live.values()))
        for p in partitions:
            result[topic, p] = min(parts[p] for parts in live.values())
    return result


def expired(batches: list[tuple[str, int, datetime]], floor: int, before: datetime) -> list[str]:
    """Keys of the batches (key, base offset, last modified) older than ``before`` whose
    records all lie below ``floor``: the next batch starts at or below it.  A batch that
    holds ``floor`` is kept (a group fetching there gets it whole), and so is the last one,
    whose end is not known without reading it."""
    ordered = sorted(batches, key=lambda b: b[1])
    return [key for (key, _, modified), (_, following, _) in zip(ordered, ordered[1:])
            if following <= floor and modified < before]


DELETE_PER_REQUEST = 1000  # S3's most keys in one DeleteObjects


class Retention:
    """One bucket of tansu's S3 storage, on s3rver at ``endpoint``."""

    def __init__(self, endpoint: str, key_id: str, secret: str, bucket: str, retention_s: float):
        self.bucket, self.retention_s = bucket, retention_s
        self.s3 = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        self.deleted = 0

    def _list(self, prefix: str):
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def commits(self) -> list[Commit]:
        found = []
        for obj in self._list(f"clusters/{CLUSTER}/groups/consumers/"):
            m = _OFFSETS.search(obj["Key"])
            if not m:
                continue
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                continue  # the group was deleted meanwhile
            found.append(Commit(m["group"], m["topic"], int(m["partition"]), int(json.loads(body)["offset"]),
                                obj["LastModified"]))
        return found

    def batches(self, topic: str, partition: int) -> list[tuple[str, int, datetime]]:
        """The partition's batch objects: (key, base offset, last modified)."""
        prefix = f"clusters/{CLUSTER}/topics/{topic}/partitions/{partition:0>10}/records/"
        return [(o["Key"], int(m["offset"]), o["LastModified"])
                for o in self._list(prefix) if (m := _BATCH.search(o["Key"]))]

    def delete(self, keys: list[str]) -> None:
        """``keys`` in DeleteObjects requests of up to 1,000 keys: one request each, not one
        per batch (the broker writes a batch object per producer request, so a lagging
        group's partition can hold thousands, all due at once when it catches up)."""
        for at in range(0, len(keys), DELETE_PER_REQUEST):
            chunk = keys[at:at + DELETE_PER_REQUEST]
            answer = self.s3.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in chunk], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise RuntimeError(f"{len(answer['Errors'])} of {len(chunk)} deletes refused, "
                                   f"first {first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def prune(self, now: datetime | None = None) -> dict[tuple[str, int], int]:
        """One pass: delete what every group has read; the count deleted per partition."""
        now = now or datetime.now(timezone.utc)
        before = now - timedelta(seconds=self.retention_s)
        done: dict[tuple[str, int], int] = {}
        for (topic, partition), floor in sorted(floors(self.commits(), now).items()):
            batches = self.batches(topic, partition)
            keys = expired(batches, floor, before)
            self.delete(keys)
            if keys:
                done[topic, partition] = len(keys)
                log.debug("%s/%d: deleted %d batches below offset %d, %d left",
                          topic, partition, len(keys), floor, len(batches) - len(keys))
        self.deleted += sum(done.values())
        return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="s3rver's URL (http://127.0.0.1:PORT)")
    ap.add_argument("--keys", required=True, type=Path, help="the stack's key file (id and secret, two lines)")
    ap.add_argument("--bucket", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    settings = StackSettings()
    key_id, secret = args.keys.read_text().split()[:2]
    retention = Retention(args.endpoint, key_id, secret, args.bucket, settings.stack_broker_retention_s)
    log.info("deleting batches every group has committed past, older than %.0f s, every %.0f s",
             settings.stack_broker_retention_s, settings.stack_broker_retention_interval_s)
    ready = StackPlumbingSettings().ready_file
    stop = stop_event()
    reported = time.monotonic()
    while not stop.is_set():
        try:
            retention.prune()
        except Exception as exc:  # s3rver restarting: the next pass tries again
            log.warning("retention pass failed (%s); next in %.0f s", exc, settings.stack_broker_retention_interval_s)
        else:
            if ready:
                Path(ready).touch()
                ready = None
        if time.monotonic() - reported >= 60:
            log.info("deleted %d batches in all", retention.deleted)
            reported = time.monotonic()
        stop.wait(settings.stack_broker_retention_interval_s)


if __name__ == "__main__":
    main()
