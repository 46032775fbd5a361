"""Several producers at once, each its own process (as several cameras' gateways would be).

The demo runs a fleet of one; the experiment runner fleets of 1..N.  Each producer
writes into its own directory of the run (``common.rundir.RunDir.add_producer``), with
its log and progress file; their CSVs are merged into the run's afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.rundir import RunDir
from common.settings import FleetSettings, with_flags

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FleetProgress:
    sent: int
    results: int
    total: int
    e2e_ms: list[float]
    done: int


def read_progress(run: RunDir, ids: list[str], count: int) -> FleetProgress:
    """The fleet's progress so far, from each producer's progress.json (one not yet
    written counts as nothing)."""
    sent = results = done = 0
    e2e: list[float] = []
    for pid in ids:
        try:
            p = json.loads((run.producer_dir(pid) / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        sent += p["sent"]
        results += p["results"]
        done += p["done"]
        e2e.extend(p["e2e_ms"])
    return FleetProgress(sent, results, count * len(ids), e2e, done)


def run_fleet(run_dir: Path, *, producers: int, count: int, rate: float, devices: int = 4,
              env: dict | None = None, on_progress=None, result_timeout_s: float = 120.0,
              extra_args: list[str] | None = None, run_tag: str = "") -> list[int]:
    """Run ``producers`` producer processes to completion, then merge their files into
    the run's; returns their exit codes."""
    run = RunDir.create(run_dir)
    tag = run_tag or run.path.name
    ids = [f"{tag}-p{i + 1}" for i in range(producers)]
    procs = []
    # PRODUCER_METRICS_PORTS (the local stack's pool in ``env``, else the VMs' producer ports
    # in the environment): the i-th producer serves its /metrics on the i-th port, so
    # Prometheus and the live dashboard see the run; producers beyond the pool serve none.
    ports = with_flags(FleetSettings, producer_metrics_ports=(env or {}).get("PRODUCER_METRICS_PORTS")).ports()
    env = {**os.environ, **(env or {})}
    for i, pid in enumerate(ids):
        out = run.add_producer(pid)
        log = open(out / "producer.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "producer", "--producer-id", pid, "--count", str(count),
             "--rate", str(rate), "--devices", str(devices), "--out", str(out),
             "--result-timeout", str(result_timeout_s), "--no-progress",
             "--progress-file", str(out / "progress.json"), *(extra_args or [])],
            cwd=ROOT, env={**env, **({"METRICS_PORT": str(ports[i]) if i < len(ports) else "0"} if ports else {})},
            stdout=log, stderr=subprocess.STDOUT))
        log.close()
    while any(p.poll() is None for p in procs):
        if on_progress:
            on_progress(read_progress(run, ids, count))
        time.sleep(0.5)
    if on_progress:
        on_progress(read_progress(run, ids, count))
    run.merge_producers(ids)
    return [p.returncode for p in procs]


def producer_log_tail(run_dir: Path, lines: int = 15) -> str:
    """The last ``lines`` of each producer's log, for a message about a failed run."""
    out = []
    for log in (d / "producer.log" for d in RunDir(run_dir).producer_dirs()):
        if not log.is_file():
            continue
        text = log.read_text(errors="replace").splitlines()
        out.append(f"--- {log}\n" + "\n".join(text[-lines:]))
    return "\n".join(out)
