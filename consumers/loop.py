"""The consume -> handle -> produce -> commit loop both consumers run.

The loop owns everything Kafka: it gathers a batch (:func:`consumers.batching.gather`),
hands it to a :class:`Handler`, sends what the handler asks for (results, dead letters),
and commits the batch's offsets only once every send is acknowledged.  A handler only
turns records into outcomes, one per record, in order:

* :class:`Done`: handled; its ``outputs`` (zero or more records) are produced (an
  :class:`Output` alone is the outcome of a record handled into one record);
* :class:`DeadLetter`: the record can never be handled: it goes to the DLQ topic as it
  is, with the reason (``common.deadletter``), and the rest of the batch goes on;
* :class:`Retry`: not now (a service or a store is down): the loop waits with backoff,
  polling with every partition paused so that the group keeps its members, and hands the
  handler those records again; nothing is committed meanwhile.

A batch that cannot be finished (stopping, a send that failed) is not committed: the
loop seeks back to its first records, so they are read again (at-least-once; the
handlers' outputs are idempotent downstream).  See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple, Protocol

from common.deadletter import to_dead_letter
from common.lifecycle import Backoff, soonest
from consumers.batching import ReadyMarker, all_delivered, commit, gather, idle_wait, rewind, wait_polling

log = logging.getLogger(__name__)


# Outcomes are named tuples: a batch makes one per record, and a tuple is the cheapest
# immutable record Python builds (a frozen dataclass costs several times more).
class Output(NamedTuple):
    """A record for the loop to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list = []


class Done(NamedTuple):
    outputs: tuple[Output, ...] = ()


class DeadLetter(NamedTuple):
    reason: str
    kind: str = "invalid_input"  # a bounded label for the metrics, never the free text


class Retry(NamedTuple):
    """``cause``: a few words (a metrics label); ``detail``: the whole story for the log;
    ``error``: log at ERROR (an operator must act, e.g. a full disk); ``after_s``: when the
    dependency said to ask again (HTTP Retry-After), None: the loop's backoff decides."""

    cause: str
    detail: str = ""
    error: bool = False
    after_s: float | None = None


Outcome = Output | Done | DeadLetter | Retry
DONE = Done()


class Handler(Protocol):
    log: logging.Logger

    def handle(self, records: list, loop: "ConsumeLoop") -> list[Outcome]:
        """One outcome per record, in order.  May call ``loop.wait(future)`` for slow work."""

    def retrying(self, retry: Retry, records: int, total: int, delay: float) -> None:
        """Log and count a retry of ``records`` of a batch of ``total`` in ``delay`` seconds."""

    def tick(self) -> None:
        """Called once per loop pass (periodic progress logs)."""


class ConsumeLoop:
    """Runs ``handler`` over ``consumer`` until ``stop`` is set; ``producer`` sends outputs and
    dead letters.  ``metrics`` has ``update_lag(consumer)``, ``dead_letter(kind)`` and
    ``committed(seconds)``."""

    def __init__(self, handler: Handler, *, consumer, producer, kafka, stop, metrics,
                 max_records: int, wait_ms: int = 0, retry_initial_s: float = 0.5, retry_max_s: float = 10.0):
        self.handler, self.consumer, self.producer = handler, consumer, producer
        self.kafka, self.stop, self.metrics = kafka, stop, metrics
        self.max_records, self.wait_ms = max_records, wait_ms
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.dead = 0
        self.attempt = 0  # which pass over the current batch (0: the first; retries after)

    def wait(self, future):
        """``future.result()``, keeping the group membership while it runs (a handler's slow call)."""
        return wait_polling(self.consumer, future)

    def run(self) -> None:
        ready = ReadyMarker()
        try:
            while not self.stop.is_set():
                records = gather(self.consumer, self.max_records, self.wait_ms)
                ready.check(self.consumer)
                self.metrics.update_lag(self.consumer)
                if records:
                    if self.process(records):
                        started = time.perf_counter()
                        commit(self.consumer, records)
                        self.metrics.committed(time.perf_counter() - started)
                    else:
                        rewind(self.consumer, records)
                self.handler.tick()
        finally:
            self.producer.flush()
            self.producer.close()
            self.consumer.close()

    def process(self, records: list) -> bool:
        """Handle ``records`` until each is done or dead-lettered, then flush; True when every
        send was acknowledged (the batch may be committed)."""
        sends: list = []
        todo, backoff = records, Backoff(self.retry_initial_s, self.retry_max_s)
        self.attempt = 0
        while True:
            outcomes = self.handler.handle(todo, self)
            retry, why, after = [], None, []
            send = self.producer.send
            for record, outcome in zip(todo, outcomes, strict=True):
                if type(outcome) is Output:
                    sends.append(send(outcome.topic, key=outcome.key, value=outcome.value, headers=outcome.headers))
                elif type(outcome) is Done:
                    sends.extend(send(o.topic, key=o.key, value=o.value, headers=o.headers) for o in outcome.outputs)
                elif type(outcome) is Retry:
                    retry.append(record)
                    after.append(outcome.after_s)
                    why = outcome if why is None or (outcome.error and not why.error) else why
                else:
                    sends.append(self.dead_letter(record, outcome))
            if not retry:
                break
            if self.stop.is_set():
                return False
            delay = soonest(backoff.next(), after)
            self.handler.retrying(why, len(retry), len(records), delay)
            idle_wait(self.consumer, delay, self.stop)
            todo, self.attempt = retry, self.attempt + 1
        if sends:
            self.producer.flush()
        return all_delivered(sends)

    def dead_letter(self, record, outcome: DeadLetter):
        self.dead += 1
        self.metrics.dead_letter(outcome.kind)
        self.handler.log.warning("dead-letter %s[%d]@%d: %s", record.topic, record.partition, record.offset,
                                 outcome.reason)
        key, value, headers = to_dead_letter(record, outcome.reason, max_bytes=self.kafka.dlq_max_record_bytes)
        return self.producer.send(self.kafka.dlq_topic, key=key, value=value, headers=headers)
