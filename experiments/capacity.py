"""The capacity of a running pipeline, measured by a short ramp, and the rates of an
experiment chosen from it (``make experiment``, the Ansible experiment stage, ``make bench``).
The method and its figures: docs/PERFORMANCE.md (the benchmark's pipeline step, and why a
sweep is sized from the knee).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from pathlib import Path
from typing import NamedTuple

from analysis.stats import KNEE_RATIO, latency_summary
from common.rundir import RunDir
from common.store import PREDICTION, PREDICTION_STORED_AT, SENT_AT, STORED_AT
from common.store.opening import reader_of
from experiments import store_writes
from experiments.fleet import run_fleet
from stack.control import LocalStack
from stack.stores import store_component

log = logging.getLogger(__name__)

PAST_KNEE = 1.15  # the sweep's highest load, in units of the knee's load (sweep_basis)
SATURATED_RATIO = 0.85  # the ramp stops when a step stores less than this of its offer
MIN_GAIN = 0.05  # ... or when one more step of load buys less than this
REFINE_STEPS = 2  # then steps between the highest offer kept up with and the lowest that was not
# The highest rate one producer process is asked for in a ramp (more processes beyond):
# a load generator should cost as little as it can on the machine it measures, and each
# process pays its start and kafka-python's wake-ups (docs/PERFORMANCE.md, levers).
PER_PRODUCER_MAX = 400.0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def stored_times(env: dict, producer_ids: list[str], expected: int, timeout_s: float,
                 stack: LocalStack | None = None) -> tuple[list[tuple], float]:
    """(sent_at, prediction_stored_at) of the documents of these producers that have a
    prediction in the store the stack's endpoints name (``env``: STORE and its endpoint),
    waiting until ``expected`` are there or ``timeout_s`` passes; and the CPU seconds these
    queries cost the store's process (0.0 without ``stack``), measured by repeating the last
    find once the pipeline is idle: they are the benchmark's work, not the pipeline's, and a
    step's CPU per image leaves them out."""
    store = reader_of(env)
    component = store_component(env.get("STORE"))
    fields = (SENT_AT, PREDICTION_STORED_AT, PREDICTION, STORED_AT)
    try:
        deadline = time.monotonic() + timeout_s
        finds = 0
        delay = 0.25
        while True:
            docs = list(store.by_producers(producer_ids, fields))
            finds += 1
            done = [(d[SENT_AT], max(d[PREDICTION_STORED_AT], d.get(STORED_AT) or 0))
                    for d in docs if d.get(PREDICTION) and d.get(PREDICTION_STORED_AT) and d.get(STORED_AT)]
            if len(done) >= expected or time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
        query_cpu = 0.0
        if stack is not None:
            before = stack.cpu_seconds().get(component, 0.0)
            list(store.by_producers(producer_ids, fields))
            query_cpu = (stack.cpu_seconds().get(component, 0.0) - before) * (finds + 1)  # this one too
        return done, query_cpu
    finally:
        store.close()


def run_step(out: Path, env: dict, *, rate: float, duration: float, tag: str,
             per_producer_max: float, devices: int = 4, stack: LocalStack | None = None) -> dict:
    """Offer ``rate`` images/s for ``duration`` s; measure what was stored and the latency,
    and the CPU each component spent per image (core-ms/img; producers included)."""
    producers = max(1, math.ceil(rate / per_producer_max))
    count = max(2, round(rate / producers * duration))
    load_before = load_average()
    cpu0 = stack.cpu_seconds() if stack else {}
    children0 = _children_cpu()
    writes0 = store_writes.snapshot(env)
    t0 = time.time()
    codes = run_fleet(out, producers=producers, count=count, rate=rate / producers,
                      devices=devices, env=env, run_tag=tag,
                      result_timeout_s=max(30.0, 3 * duration))
    wall = time.time() - t0
    run = RunDir(out)
    rows = run.latencies() if run.latencies_csv.exists() else []
    ids = sorted({r.producer_id for r in rows})
    sent = len(rows)
    done, query_cpu = stored_times(env, ids, sent, timeout_s=30.0, stack=stack) if sent else ([], 0.0)
    cpu1 = stack.cpu_seconds() if stack else {}
    writes = store_writes.summary(writes0, store_writes.snapshot(env))
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    component = store_component(env.get("STORE"))  # the store's process: mongo, postgres or couchdb
    if component in cpu:  # the benchmark's own queries (stored_times) are not the pipeline's work
        cpu[component] = max(0.0, cpu[component] - query_cpu)
    cpu["producers"] = _children_cpu() - children0
    step = {"offered_img_s": round(rate, 2), "producers": producers, "sent": sent,
            "results": sum(1 for r in rows if r.e2e_ms is not None),
            "stored_with_prediction": len(done), "exit_codes": codes, "wall_s": round(wall, 1),
            "load_average_before": load_before, "query_cpu_s_left_out": round(query_cpu, 3)}
    if rows:
        first_sent = min(r.sent_at for r in rows)
        last_sent = max(r.sent_at for r in rows)
        step["send_rate_img_s"] = round(sent / (last_sent - first_sent), 2) if last_sent > first_sent else None
    if done:
        span = max(t for _s, t in done) - min(s for s, _t in done)
        step["throughput_img_s"] = round(len(done) / span, 2) if span > 0 else None
    else:
        step["throughput_img_s"] = 0.0
    e2e = latency_summary(r.e2e_ms for r in rows if r.e2e_ms is not None)
    step["e2e_ms"] = {k: round(v, 1) for k, v in e2e.items()} if e2e else None
    step["complete"] = sent > 0 and len(done) == sent
    step["cpu_ms_per_img"] = {k: round(v * 1000 / max(1, sent), 2) for k, v in cpu.items()}
    step["cpu_cores_busy"] = round(sum(cpu.values()) / max(1e-9, wall), 2)
    step["store_write_ms"] = writes  # the DB writer's batch writes: p50/p99 and how many
    log.info("%s: offered %.1f img/s (%d producer%s) -> %s img/s stored with prediction; "
             "p50 %s p99 %s ms; %d/%d complete; load %s; CPU ms/img %s", tag, rate, producers,
             "s" if producers > 1 else "", step["throughput_img_s"],
             e2e and round(e2e["p50"]), e2e and round(e2e["p99"]), len(done), sent, load_before,
             step["cpu_ms_per_img"])
    return step


class Ramp(NamedTuple):
    best: float  # the best stored rate of any step, images/s: the capacity
    steps: list  # run_step's records, in the order run
    knee_between: tuple | None  # (highest offer kept up with, lowest not), images/s; None: not bracketed


def ramp(out: Path, env: dict, *, start_rate: float, growth: float, max_steps: int, step_s: float,
         per_producer_max: float, tag: str, stack=None, refine_steps: int = REFINE_STEPS) -> Ramp:
    """``run_step`` at ``start_rate``, ``start_rate * growth``, ... until saturated, then up to
    ``refine_steps`` steps between the highest offer that was kept up with (``KNEE_RATIO``
    of it stored) and the lowest that was not, each at their geometric mean.

    The refinement narrows the knee (the highest load still kept up with) from one
    ``growth`` factor (1.35-1.6) to a few per cent, and a step there may store more than
    the overloaded step did (a backlog costs).  The capacity is the best stored rate over
    all the steps, overloaded ones included."""
    rate, best, steps = start_rate, 0.0, []

    def step_at(rate: float, label: str) -> float:
        step = run_step(out / f"ramp-{len(steps) + 1:02d}", env, rate=rate, duration=step_s,
                        tag=f"{tag}-{label}", per_producer_max=per_producer_max, stack=stack)
        steps.append(step)
        return step["throughput_img_s"] or 0.0

    for i in range(max_steps):
        got = step_at(rate, f"r{i + 1}")
        gain = (got - best) / best if best else float("inf")
        best = max(best, got)
        # Saturated: the stored rate falls well behind the offered one (a backlog
        # grew), or one more step of load bought less than 5 %.
        if got < SATURATED_RATIO * rate or gain < MIN_GAIN:
            break
        rate = rate * growth
    kept = [s["offered_img_s"] for s in steps if (s["throughput_img_s"] or 0) >= KNEE_RATIO * s["offered_img_s"]]
    missed = [s["offered_img_s"] for s in steps if (s["throughput_img_s"] or 0) < KNEE_RATIO * s["offered_img_s"]]
    low, high = max(kept, default=None), min(missed, default=None)
    for j in range(refine_steps if low is not None and high is not None and low < high else 0):
        rate = math.sqrt(low * high)
        if rate < low * (1 + MIN_GAIN):
            break  # narrower than the noise of one step
        got = step_at(rate, f"refine{j + 1}")
        best = max(best, got)
        if got >= KNEE_RATIO * rate:
            low = rate
        else:
            high = rate
    knee = (round(low, 2), round(high, 2)) if low is not None and high is not None and low < high else None
    return Ramp(best, steps, knee)


def sweep_basis(r: Ramp) -> tuple[float, str]:
    """The load (images/s offered) a sweep is sized from, and what it is: the knee, where
    the ramp bracketed it (the geometric mean of the highest offer kept up with and the
    lowest that was not), else the capacity, which overstates what the pipeline keeps up
    with (an overloaded short step stores in larger batches; docs/PERFORMANCE.md)."""
    if r.knee_between:
        low, high = r.knee_between
        return round(math.sqrt(low * high), 2), "knee"
    return r.best, "capacity"


def choose_rate(basis_img_s: float, producers: list[int], past_knee: float = PAST_KNEE) -> float:
    """Images/s per producer so that the most producers offer ``past_knee`` x ``basis_img_s``
    (``sweep_basis``: the knee's load, or the capacity)."""
    if basis_img_s <= 0:
        raise ValueError(f"no capacity measured ({basis_img_s} img/s): is the pipeline storing anything?")
    return round(basis_img_s * past_knee / max(producers), 2)
