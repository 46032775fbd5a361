"""What the soak watches while it runs, every ``EVERY_S``: the resident memory of every
process of the stack and of the producers (psutil), and the lag of both consumer groups
(the end offsets of their topics minus their committed offsets, from the broker)."""

from __future__ import annotations

import logging
import threading
import time

import psutil

from stack.control import process_tree, supervisor_pid
from tests.soak.detector import Lifetime

log = logging.getLogger(__name__)

EVERY_S = 2.0
# Group -> the topics it consumes (consumers/inference.py, consumers/db.py).
GROUPS = {"iot-inference": ("images",), "iot-db-writer": ("images", "results")}


class Lag:
    """Consumer lag per group, read from the broker (None while it cannot be read)."""

    def __init__(self, settings):
        self.settings = settings
        self.admin = self.consumer = None

    def _connect(self) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        from common.kafka_io import client_config

        cfg = client_config(self.settings)
        self.admin = KafkaAdminClient(**cfg, request_timeout_ms=3000)
        self.consumer = KafkaConsumer(**cfg, group_id=None, enable_auto_commit=False)

    def read(self) -> dict[str, int | None]:
        from kafka import TopicPartition

        topics = {"images": self.settings.images_topic, "results": self.settings.results_topic}
        try:
            if self.admin is None:
                self._connect()
            tps = [TopicPartition(topics[t], p) for t in ("images", "results")
                   for p in sorted(self.consumer.partitions_for_topic(topics[t]) or ())]
            end = self.consumer.end_offsets(tps)
            out: dict[str, int | None] = {}
            for group, kinds in GROUPS.items():
                committed = self.admin.list_group_offsets(group).get(group, {})
                wanted = {topics[k] for k in kinds}
                out[group] = sum(max(0, end[tp] - max(0, _offset(committed.get(tp))))
                                 for tp in tps if tp.topic in wanted)
            return out
        except Exception as exc:  # noqa: BLE001 - the broker away (killed): no reading now
            log.debug("lag not read: %s", exc)
            self.close()
            return {g: None for g in GROUPS}

    def close(self) -> None:
        for client in (self.admin, self.consumer):
            try:
                if client is not None:
                    client.close()
            except Exception:  # noqa: BLE001 - closing a client of a dead broker
                pass
        self.admin = self.consumer = None


def _offset(meta) -> int:
    """A committed offset (an OffsetAndMetadata, a bare int, or None: nothing committed)."""
    if meta is None:
        return 0
    return int(getattr(meta, "offset", meta))


def roles(stack) -> dict[int, tuple[str, str]]:
    """pid -> (component, role) for every process of the stack: the supervisor, each
    component's root and its children (Gunicorn's workers)."""
    out: dict[int, tuple[str, str]] = {}
    sup = supervisor_pid(stack.dir)
    if sup:
        out[sup] = ("supervisor", "supervisor")
    for name, root in stack.pids().items():
        for i, proc in enumerate(process_tree(root)):
            if i == 0:
                out[proc.pid] = (name, "gunicorn-master" if name == "inference" else "main")
            else:
                out[proc.pid] = (name, "gunicorn-worker" if name == "inference" else "child")
    return out


class Sampler(threading.Thread):
    """Samples until stopped: ``lifetimes`` (by pid and start time) and ``lag`` rows."""

    def __init__(self, stack, producers, settings, every_s: float = EVERY_S):
        super().__init__(name="soak-sampler", daemon=True)
        self.stack, self.producers, self.every_s = stack, producers, every_s
        self.lag_reader = Lag(settings)
        self.lifetimes: dict[tuple[int, float], Lifetime] = {}
        self.lag: list[dict] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def sample_memory(self, now: float) -> None:
        who = roles(self.stack)
        who.update({pid: ("producer", pid_name) for pid, pid_name in self.producers.live().items()})
        for pid, (component, role) in who.items():
            try:
                proc = psutil.Process(pid)
                key = (pid, proc.create_time())
                rss = proc.memory_info().rss
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if rss == 0:  # exiting: its memory is already given back, not a sample of its life
                continue
            with self.lock:
                life = self.lifetimes.get(key)
                if life is None:
                    life = self.lifetimes[key] = Lifetime(component, role, pid)
                life.samples.append((now, rss))

    def run(self) -> None:
        while not self.stop_event.is_set():
            now = time.time()
            self.sample_memory(now)
            lag = self.lag_reader.read()
            with self.lock:
                self.lag.append({"t": now, **lag})
            self.stop_event.wait(max(0.1, self.every_s - (time.time() - now)))
        self.lag_reader.close()

    def latest(self) -> dict | None:
        with self.lock:
            return dict(self.lag[-1]) if self.lag else None

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)
