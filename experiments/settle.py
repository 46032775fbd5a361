"""The settle between two trials of an experiment, measured rather than guessed.

After a trial the pipeline may still be working off what it sent: batches in flight,
results not yet written, a broker compacting, Gunicorn's worker finishing.  A trial that
starts then measures the previous one's tail.  ``Settler.wait`` returns once each thing that
can be measured from here says the pipeline is idle, and records how long that took:

- every image of the trial is stored with its prediction (the trial was closed against the
  store before, ``common.rundir.RunDir.close``: its ``lost`` says whether all were);
- consumer lag is zero: for each consumer group, the committed offsets have reached the end
  offsets of the topics it reads (the embedded broker's end offsets are approximate, a
  record or so behind; the store condition above is what is exact);
- the stack's CPU is quiet: on the local stack, the CPU its components use over a
  ``window_s`` window is back within ``margin_cores`` of what they used idle before the
  first trial (``baseline``).  A deployed stack's servers are other machines: not measured.

Each condition has a deadline (``max_s``); a trial that did not settle in time is recorded
as such (``settled: false`` and what was still busy), and the experiment goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Consumer group -> topics it reads (the topics by their KafkaSettings field).
GROUPS = {"iot-inference": ("images_topic",), "iot-db-writer": ("images_topic", "results_topic")}


class KafkaLag:
    """Records behind, summed over the pipeline's consumer groups and their partitions."""

    def __init__(self, env: dict):
        from kafka import KafkaAdminClient, KafkaConsumer

        from common.kafka_io import client_config
        from common.settings import KafkaSettings

        self.kafka = KafkaSettings(kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        cfg = client_config(self.kafka)
        self.admin = KafkaAdminClient(**cfg)
        self.consumer = KafkaConsumer(**cfg, group_id=None, enable_auto_commit=False)

    def __call__(self) -> int:
        from kafka import TopicPartition

        lag = 0
        for group, fields in GROUPS.items():
            tps = [TopicPartition(topic, p) for topic in (getattr(self.kafka, f) for f in fields)
                   for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
            end = self.consumer.end_offsets(tps)
            committed = self.admin.list_group_offsets({group: None}).get(group, {})
            for tp in tps:
                done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
                lag += max(0, end.get(tp, 0) - done)
        return lag

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


def stack_cpu(stack_dir: Path) -> Callable[[], float]:
    """CPU seconds used so far by the local stack's components (their process trees)."""
    from stack.control import LocalStack

    stack = LocalStack(stack_dir)
    return lambda: sum(stack.cpu_seconds().values())


class Settler:
    """Waits for the pipeline to be idle between trials (module docstring).

    ``lag()`` returns the records behind (None: not measurable); ``cpu_seconds()`` the
    stack's CPU seconds so far (None as a whole: not measured)."""

    def __init__(self, lag: Callable[[], int | None], cpu_seconds: Callable[[], float] | None, *,
                 max_s: float = 120.0, window_s: float = 1.0, margin_cores: float = 0.15,
                 clock=time):
        self.lag, self.cpu_seconds = lag, cpu_seconds
        self.max_s, self.window_s, self.margin_cores = max_s, window_s, margin_cores
        self.clock = clock
        self.idle_cores: float | None = None

    def _lag(self) -> int | None:
        try:
            return self.lag()
        except Exception as exc:  # noqa: BLE001 - a broker hiccup: this poll says nothing
            log.warning("consumer lag not read: %s", exc)
            return None

    def close(self) -> None:
        """Close what ``lag`` holds open (a ``KafkaLag``'s clients)."""
        getattr(self.lag, "close", lambda: None)()

    def _cores(self) -> float:
        """CPU cores the stack kept busy over one window."""
        before, t0 = self.cpu_seconds(), self.clock.monotonic()
        self.clock.sleep(self.window_s)
        return (self.cpu_seconds() - before) / max(1e-9, self.clock.monotonic() - t0)

    def baseline(self, windows: int = 3) -> dict:
        """Wait for zero lag, then measure the stack's idle CPU: the lowest of ``windows``
        windows (the least disturbed by whatever else the machine runs)."""
        state = self.wait(self.clock.time(), cpu=False)
        if self.cpu_seconds is not None:
            self.idle_cores = min(self._cores() for _ in range(windows))
        return {"lag": state["lag"], "idle_cpu_cores": None if self.idle_cores is None else round(self.idle_cores, 3),
                "margin_cores": self.margin_cores if self.cpu_seconds is not None else None}

    def wait(self, trial_end: float, *, stored: bool | None = None, cpu: bool = True) -> dict:
        """Until the lag is zero and the CPU quiet (or ``max_s``); ``trial_end`` (unix seconds,
        the trial's last result) is where ``settle_s`` counts from; ``stored`` is whether
        the trial was closed with every image stored."""
        deadline = self.clock.monotonic() + self.max_s
        lag = cores = None
        lag_ok = False
        measure_cpu = cpu and self.cpu_seconds is not None and self.idle_cores is not None
        cpu_ok = not measure_cpu
        while True:
            if not lag_ok:
                lag = self._lag()
                lag_ok = lag is None or lag == 0
            if lag_ok and not cpu_ok:
                cores = self._cores()
                cpu_ok = cores <= self.idle_cores + self.margin_cores
            if (lag_ok and cpu_ok) or self.clock.monotonic() > deadline:
                break
            if not lag_ok:
                self.clock.sleep(0.5)
        busy = [name for name, ok in (("consumer lag", lag_ok), ("stack CPU", cpu_ok), ("store", stored is not False))
                if not ok]
        out = {"settled": not busy, "settle_s": round(max(0.0, self.clock.time() - trial_end), 2),
               "stored": stored, "lag": lag, "cpu_cores": None if cores is None else round(cores, 3),
               "idle_cpu_cores": None if self.idle_cores is None else round(self.idle_cores, 3),
               "measured": [name for name, known in (("store", stored is not None), ("consumer lag", lag is not None),
                                                     ("stack CPU", cores is not None)) if known]}
        if busy:
            out["still_busy"] = busy
            log.warning("not settled after %.0f s: %s still busy", self.max_s, ", ".join(busy))
        return out
