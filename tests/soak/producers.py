"""The soak's cameras: ``python -m producer`` processes (as experiments.fleet starts
them) sending for the soak's length; one can be SIGKILLed and replaced by a new one
(a new producer id, new images) that sends for what is left of the soak."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.rundir import RunDir
from tests.support import ROOT

DEVICES = 4
RESULT_TIMEOUT_S = 300.0


class Producers:
    def __init__(self, run_dir: Path, env: dict, *, tag: str, count: int, rate_each: float, end_at: float):
        self.run = RunDir.create(run_dir)
        self.env = {**os.environ, **env}
        self.tag, self.count, self.rate_each, self.end_at = tag, count, rate_each, end_at
        self.slots: list[list[dict]] = [[] for _ in range(count)]  # each slot's producers, oldest first
        self.lock = threading.Lock()

    def _start(self, slot: int) -> dict:
        generation = len(self.slots[slot])
        pid_name = f"{self.tag}-p{slot + 1}" + (f"-r{generation}" if generation else "")
        seconds = max(1.0, self.end_at - time.time())
        out = self.run.add_producer(pid_name)
        log = open(out / "producer.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "--producer-id", pid_name,
             "--count", str(max(1, math.ceil(seconds * self.rate_each))), "--rate", str(self.rate_each),
             "--devices", str(DEVICES), "--out", str(out), "--result-timeout", str(RESULT_TIMEOUT_S),
             "--no-progress", "--progress-file", str(out / "progress.json")],
            cwd=ROOT, env={**self.env, "METRICS_PORT": "0"}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        entry = {"producer_id": pid_name, "proc": proc, "started_at": time.time(), "killed_at": None}
        with self.lock:
            self.slots[slot].append(entry)
        return entry

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def kill_one(self, rng) -> dict:
        """SIGKILL a running producer (chosen with ``rng``) and start its replacement."""
        with self.lock:
            running = [s for s in range(self.count) if self.slots[s][-1]["proc"].poll() is None]
        if not running:
            raise RuntimeError("no producer is running")
        slot = rng.choice(running)
        victim = self.slots[slot][-1]
        t = time.time()
        victim["proc"].send_signal(signal.SIGKILL)
        victim["proc"].wait()
        victim["killed_at"] = t
        fresh = self._start(slot)
        return {"t": t, "killed": victim["producer_id"], "replaced_by": fresh["producer_id"],
                "acknowledged_before_kill": self.progress(victim["producer_id"]).get("sent")}

    def live(self) -> dict[int, str]:
        with self.lock:
            return {e["proc"].pid: e["producer_id"] for slot in self.slots for e in slot if e["proc"].poll() is None}

    def all(self) -> list[dict]:
        with self.lock:
            return [e for slot in self.slots for e in slot]

    def progress(self, producer_id: str) -> dict:
        try:
            return json.loads((self.run.producer_dir(producer_id) / "progress.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, timeout_s: float) -> list[int | None]:
        """Wait for every producer still running; their exit codes (None: still running)."""
        deadline = time.time() + timeout_s
        for e in self.all():
            try:
                e["proc"].wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        return [e["proc"].poll() for e in self.all()]

    def stop(self) -> None:
        for e in self.all():
            if e["proc"].poll() is None:
                e["proc"].kill()
                e["proc"].wait()
