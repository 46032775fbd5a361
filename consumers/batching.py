"""Pieces both consumers share: gathering a batch, waiting out an outage, committing."""

from __future__ import annotations

import logging
import time
from time import time as wall_time  # the producers' clock (unit tests replace ``time``)

from kafka.errors import KafkaConnectionError

log = logging.getLogger(__name__)
BROKER_AWAY_PAUSE_S = 1.0  # between polls while the broker is unreachable


def gather(consumer, max_records: int, wait_ms: int, idle_timeout_ms: int = 500) -> list:
    """Up to ``max_records`` records: wait for the first, then at most ``wait_ms`` more.

    ``wait_ms`` counts from when the oldest record was produced (its CreateTime), not from
    when this poll got it: records that already waited while the previous batch was
    processed are not held for another ``wait_ms``.  Never longer than ``wait_ms`` from
    the first poll that returned records (a producer's clock ahead of ours, or records
    without a timestamp)."""
    records: list = []
    deadline = None
    while len(records) < max_records:
        if deadline is None:
            timeout = idle_timeout_ms
        else:
            timeout = int((deadline - time.monotonic()) * 1000)
            if timeout <= 0:
                break
        try:
            polled = consumer.poll(timeout_ms=timeout, max_records=max_records - len(records))
        except KafkaConnectionError as exc:
            # The broker away (restarting): kafka-python raises when it cannot reach the group
            # coordinator.  Nothing was taken from the topic, so poll again later; what was
            # gathered goes on (its commit waits for the broker like any other).
            log.warning("broker unreachable (%s); polling again in %.0f s", exc, BROKER_AWAY_PAUSE_S)
            time.sleep(BROKER_AWAY_PAUSE_S)
            return records
        for batch in polled.values():
            records.extend(batch)
        if not records:
            return records
        if not wait_ms:
            break  # what the first poll brought
        if deadline is None:
            deadline = time.monotonic() + max(0.0, wait_ms / 1000 - waited_s(records))
    return records


def waited_s(records) -> float:
    """How long the oldest of ``records`` has existed, by its producer's timestamp
    (CreateTime, ms since the epoch); 0 when none has one."""
    stamps = [r.timestamp for r in records if r.timestamp and r.timestamp > 0 and r.timestamp_type == 0]
    return max(0.0, wall_time() - min(stamps) / 1000) if stamps else 0.0


def idle_wait(consumer, seconds: float, stop) -> None:
    """Sleep ``seconds`` while keeping group membership: poll with every partition paused.

    kafka-python leaves the group when poll() is not called within
    max.poll.interval.ms; polling paused partitions returns nothing but proves
    liveness, so an outage of the service or database costs latency, not a rebalance.
    """
    try:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            poll_paused(consumer, min(200, max(1, int((deadline - time.monotonic()) * 1000))))
    finally:
        consumer.resume(*consumer.assignment())


def poll_paused(consumer, timeout_ms: int) -> None:
    """One liveness poll with every partition paused.

    A rebalance inside poll() can assign partitions that are not paused yet and the
    same poll may return their records; those are not processed here, so seek back
    to them (dropping them would let the next commit skip past them: loss).
    """
    consumer.pause(*consumer.assignment())
    for tp, records in consumer.poll(timeout_ms=timeout_ms).items():
        if records:
            consumer.seek(tp, records[0].offset)


def wait_polling(consumer, future, poll_ms: int = 200):
    """``future.result()``, polling with paused partitions while it runs.

    The inference consumer calls the service in a worker thread through this: a
    batch slower than max.poll.interval.ms would otherwise make kafka-python leave
    the group mid-call, the commit fail, and the same batch be redelivered and
    recomputed forever (a rebalance loop).

    It waits on the future itself and polls (briefly) only every ``poll_ms``: a
    paused poll returns nothing and so always lasts its whole timeout, which would
    round every call up to a multiple of ``poll_ms`` (a 150 ms batch took 200-400
    ms: the pipeline's throughput halved, docs/PERFORMANCE.md).  A call faster than
    ``poll_ms`` pauses nothing, so the records kafka-python prefetched are kept.
    """
    import concurrent.futures

    try:
        # Wait, then ask: future.result(timeout) raises TimeoutError both for "still
        # running" and for a call that itself failed with a TimeoutError (one class since
        # Python 3.11), which would have looped here forever.
        while not concurrent.futures.wait([future], timeout=poll_ms / 1000).done:
            poll_paused(consumer, 1)  # liveness only
        return future.result()
    finally:
        consumer.resume(*consumer.assignment())


def next_offsets(records) -> dict:
    """Offsets to commit after processing ``records``: last offset + 1 per partition."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    last: dict = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in last.items()}


def commit(consumer, records) -> bool:
    """Commit what was processed; a lost partition (rebalance) is not an error: its new
    owner re-reads from the last commit, which at-least-once delivery allows."""
    from kafka.errors import CommitFailedError, KafkaError

    offsets = {tp: om for tp, om in next_offsets(records).items() if tp in consumer.assignment()}
    if not offsets:
        return False
    try:
        consumer.commit(offsets)
        return True
    except (CommitFailedError, KafkaError) as exc:
        log.warning("commit failed (%s); the batch will be redelivered", exc)
        return False


def rewind(consumer, records) -> None:
    """Seek back to the first record of an unfinished batch so that it is read again
    (otherwise the next commit would skip past it)."""
    from kafka import TopicPartition

    first: dict = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    for tp, offset in first.items():
        if tp in consumer.assignment():
            consumer.seek(tp, offset)


def all_delivered(futures) -> bool:
    """After producer.flush(): did every send succeed?"""
    failed = [f for f in futures if f.failed()]
    for f in failed[:3]:
        log.error("publish failed: %s", f.exception)
    return not failed


class ReadyMarker:
    """Touches ``$READY_FILE`` once the consumer owns partitions.

    The local stack's supervisor waits for this file, so ``make up`` returns only
    after the group join (which takes a few seconds) and the first images of a
    demo do not queue behind it.  Without READY_FILE this does nothing.
    """

    def __init__(self):
        from common.settings import StackPlumbingSettings

        self.path = StackPlumbingSettings().ready_file
        self.done = not self.path

    def check(self, consumer) -> None:
        if not self.done and consumer.assignment():
            from pathlib import Path

            Path(self.path).touch()
            self.done = True
            log.info("joined the group with partitions %s",
                     sorted(f"{tp.topic}[{tp.partition}]" for tp in consumer.assignment()))
