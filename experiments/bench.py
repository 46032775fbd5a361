"""``make bench`` / ``python -m experiments.bench``: the pipeline against the model's limit
and against the per-message design (batching off: one request, one write, one commit per
message), in one run on one machine, at each input size.  The method, the output
(``results/bench/<run>/bench.json``, ``bench.png``, a table) and the figures:
docs/PERFORMANCE.md.  ``--smoke`` runs a tiny version (seconds per step) that only proves
the machinery and the output files; it says nothing about performance.

The model is the service's settings': ``MODEL_ENGINE=torch MODEL=cifar10_resnet20 make bench``
measures the CIFAR ResNet (32 px only) the same way, its limit included;
``INFERENCE_MODE=embedded`` the pipeline with the model inside the inference consumer (no
service, no HTTP hop) against the same bare-model limit.

This module runs the configurations (the ramp, the latency points, the two stacks of one
run); the model's limit is experiments/model_limit.py; the figures, the targets, the table
and bench.png are experiments/bench_report.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from common.log import setup_logging
from common.settings import (DatasetSettings, DbWriterSettings, GunicornSettings, InferenceClientSettings,
                             KafkaSettings, ServiceSettings, StackSettings, StoreSettings, given, settings_env,
                             with_flags)
from experiments.bench_report import LOAD_POINTS, check_targets, issue_figures, plot, step_ms, table
from experiments.capacity import PER_PRODUCER_MAX, load_average, ramp, run_step
from experiments.facts import host_facts, versions
from experiments.model_limit import collect_limit, measure_limit, start_limit
from experiments.runner import point_latest
from stack.control import LocalStack

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
LIMIT_BATCHES = (8, 16, 32, 64)


# The per-message design, expressed as settings of the same code.
BASELINE_ENV = settings_env(predict_batch_images=1, predict_batch_wait_ms=0, model_batch_max_images=1,
                            model_batch_delay_ms=0, db_max_records=1)
# Settings recorded in bench.json (whatever the environment or defaults make them).
RECORDED = ("MODEL_ENGINE", "MODEL", "INFERENCE_MODE", "PREDICT_BATCH_IMAGES", "PREDICT_BATCH_WAIT_MS", "MODEL_BATCH_MAX_IMAGES", "MODEL_BATCH_DELAY_MS",
            "DB_MAX_RECORDS", "TF_INTRA_OP_THREADS", "TF_INTER_OP_THREADS", "GUNICORN_WORKERS",
            "GUNICORN_THREADS", "KAFKA_LINGER_MS", "KAFKA_PRODUCER_BATCH_BYTES", "KAFKA_FETCH_MAX_WAIT_MS", "MODEL_WEIGHTS",
            "MODEL_INPUT_SIZE", "IMAGES_PARTITIONS", "STORE", "STACK_BROKER_STORAGE")


def effective_settings(env: dict) -> dict:
    """The settings the components will see (environment, else their defaults)."""
    defaults = {}
    for group in (InferenceClientSettings, ServiceSettings, KafkaSettings, DbWriterSettings,
                  GunicornSettings, StoreSettings, StackSettings):
        for name, f in group.model_fields.items():
            defaults.setdefault(name.upper(), f.default)
    out = {k: env.get(k, defaults.get(k)) for k in RECORDED}
    out["MODEL"] = out["MODEL"] or served_model(env)
    return out


def served_model(env: dict) -> str:
    """The network the service and the limit load with ``env`` (MODEL, else its engine's default)."""
    from common.settings_service import ServiceSettings as Service

    keys = ("MODEL", "MODEL_ENGINE", "DATASET")
    return Service(**{k.lower(): env[k] for k in keys if env.get(k)}).served_model()


# ------------------------------------------------------------------ stacks

def bench_stack(name: str, env: dict, workdir: Path) -> LocalStack:
    """A stack of its own for one configuration (temporary STACK_DIR, free ports), without
    Prometheus and the dashboard: the benchmark measures the pipeline, not its monitoring
    (what the metrics themselves cost: python -m bench.metrics_cost)."""
    return LocalStack(workdir / f"stack-{name}", {"STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0", **env},
                      name=name)


def measure_stack(name: str, env: dict, workdir: Path, out: Path, **kw) -> dict:
    with bench_stack(name, env, workdir) as stack:
        return measure_on(stack, out, **kw)


def measure_on(stack: LocalStack, out: Path, *, start_rate: float, growth: float, max_steps: int,
               step_s: float, latency_s: float, per_producer_max: float, warmup: int,
               load_points=LOAD_POINTS, fresh_for_latency: bool = True, min_samples: int = 0,
               image_cost: bool = False) -> dict:
    """Ramp the offered rate to find the maximum sustained throughput, then latency at
    25/50/75 % of it; returns the figures and the peak RSS of every component."""
    name = stack.name
    record: dict = {"name": name, "env": {k: v for k, v in stack.env.items() if k in RECORDED},
                    "ramp": [], "latency": {}}
    if warmup:
        run_step(out / "warmup", stack.env, rate=max(5.0, start_rate / 2),
                 duration=warmup / max(5.0, start_rate / 2), tag=f"{name}-warmup",
                 per_producer_max=per_producer_max, stack=stack)
    best, record["ramp"], knee_between = ramp(out, stack.env, start_rate=start_rate, growth=growth,
                                              max_steps=max_steps, step_s=step_s,
                                              per_producer_max=per_producer_max, tag=name, stack=stack)
    record["max_img_s"] = best
    # highest offer kept up with (95 % stored), lowest not: img/s, or None
    record["knee_between_img_s"] = knee_between
    # The ramp's peak load is where memory peaks.  Then a fresh stack for the latency
    # points: the embedded broker keeps every message in memory and gets slower as the
    # ramp's overload steps fill it (its CPU per image grew 4x on this machine), which
    # would describe the leftover backlog rather than the pipeline at that load.
    record["peak_rss"] = stack.peak_rss()
    if fresh_for_latency:
        stack.stop()
        stack.start()
    if warmup and fresh_for_latency:
        run_step(out / "warmup-latency", stack.env, rate=max(5.0, start_rate / 2),
                 duration=warmup / max(5.0, start_rate / 2), tag=f"{name}-warmup2",
                 per_producer_max=per_producer_max, stack=stack)
    for pct in load_points:
        r = max(1.0, best * pct / 100)
        # At least min_samples images per point: a slow model (224 px) gets longer points.
        step = run_step(out / f"load-{pct}pct", stack.env, rate=r, duration=max(latency_s, min_samples / r),
                        tag=f"{name}-l{pct}", per_producer_max=per_producer_max, stack=stack)
        record["latency"][f"{pct}pct"] = step
    if image_cost:
        record["image_cost"] = measure_image_cost(stack, out / "image-cost", rate=max(2.0, best * 0.25),
                                                  duration=latency_s, per_producer_max=per_producer_max)
    for component, later in stack.peak_rss().items():
        earlier = record["peak_rss"].get(component)
        if earlier is None or (later["peak_rss_mib"] or 0) > (earlier["peak_rss_mib"] or 0):
            record["peak_rss"][component] = later
    return record


def measure_image_cost(stack: LocalStack, out: Path, *, rate: float, duration: float,
                       per_producer_max: float, rounds: int = 2) -> dict:
    """CPU per image of a 640x480 camera JPEG (DATASET=folder, experiments/camera_images.py)
    beside the 32 px PNG, on the same stack at the same offered rate, in interleaved steps:
    core-ms per image of each component, and the ratio of the totals."""
    from experiments.camera_images import write_folder

    folder = out / "jpeg640"
    jpegs = write_folder(folder, count=64)
    kinds = {"png32": {}, "jpeg640": {"DATASET": "folder", "DATASET_SOURCE": str(folder)}}
    steps: dict[str, list] = {k: [] for k in kinds}
    for i in range(rounds):
        for kind, env in kinds.items():
            steps[kind].append(run_step(out / f"{kind}-{i + 1}", {**stack.env, **env}, rate=rate, duration=duration,
                                        tag=f"{stack.name}-{kind}{i + 1}", per_producer_max=per_producer_max,
                                        stack=stack))
    figures: dict = {"offered_img_s": round(rate, 2), "rounds": rounds,
                     "jpeg_bytes": sum(p.stat().st_size for p in jpegs) // len(jpegs)}
    for kind, runs in steps.items():
        components = sorted({c for st in runs for c in st.get("cpu_ms_per_img") or {}})
        per = {c: round(sum((st.get("cpu_ms_per_img") or {}).get(c, 0.0) for st in runs) / len(runs), 2)
               for c in components}
        figures[kind] = {"cpu_ms_per_img": per, "total_core_ms_per_img": round(sum(per.values()), 2),
                         "complete": all(st.get("complete") for st in runs),
                         "p50_ms": step_ms(runs[-1], "p50")}
    png, jpeg = figures["png32"]["total_core_ms_per_img"], figures["jpeg640"]["total_core_ms_per_img"]
    figures["jpeg640_over_png32"] = round(jpeg / png, 2) if png else None
    log.info("image cost at %.1f img/s: 32 px PNG %.2f core-ms/img, 640x480 JPEG %.2f (x%s)", rate, png, jpeg,
             figures["jpeg640_over_png32"])
    return figures


# ------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny run (about a minute) that checks the machinery, not the speed")
    p.add_argument("--out", type=Path, help="run directory (default results/bench/<time>)")
    p.add_argument("--step-s", type=float, help="seconds of load per ramp step (default 15)")
    p.add_argument("--latency-s", type=float, help="seconds of load per latency point (default 15)")
    p.add_argument("--start-rate", type=float,
                   help="first offered rate of the pipeline ramp (default 40%% of the limit)")
    p.add_argument("--growth", type=float, default=1.35, help="rate factor between ramp steps")
    p.add_argument("--max-steps", type=int, help="most ramp steps per stack (default 8)")
    p.add_argument("--per-producer", type=float, default=PER_PRODUCER_MAX,
                   help="highest rate one producer process is asked for (more processes beyond; "
                        f"default {PER_PRODUCER_MAX:g})")
    p.add_argument("--only", choices=["pipeline", "baseline"], help="measure one stack only")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="model input sizes, each a full run; the first is the top level of bench.json, the "
                        "others objects named after them (default: 32 224; smoke: 32)")
    p.add_argument("--min-samples", type=int, default=None,
                   help="images per latency point at least (default 1000; smoke: 0)")
    args = p.parse_args(argv)
    args.engine = with_flags(ServiceSettings, p).model_engine
    # The benchmark's own defaults where the environment gives none: random weights, no
    # access log, synthetic images (no download; the same 32x32 PNGs).
    service, gunicorn, data = (with_flags(g, p) for g in (ServiceSettings, GunicornSettings, DatasetSettings))
    args.service_env = {"MODEL_WEIGHTS": given(service, "model_weights") or "random",
                        "GUNICORN_ACCESSLOG": given(gunicorn, "gunicorn_accesslog") or "/dev/null",
                        **({} if given(data, "dataset_source") or given(data, "dataset") else {"DATASET": "synthetic"})}
    return args


def _at_once(calls) -> list[Exception]:
    """Run each of ``calls`` in a thread of its own, wait for them all; what they raised."""
    errors: list[Exception] = []

    def run(call):
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - returned to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def smoke_run(result, env_now, batches, pipeline_env, baseline_env, workdir, out, kw) -> None:
    """Smoke mode: everything at once to be quick (the numbers mean nothing): the limit
    process and both stacks start concurrently, then one short step and the 50 %
    point on each stack, then both stop."""
    proc = start_limit(env_now, batches, 0.3)
    stacks = [bench_stack("pipeline", pipeline_env, workdir), bench_stack("baseline", baseline_env, workdir)]
    try:
        errors = _at_once([st.start for st in stacks])
        if errors:
            raise errors[0]
        result["limit"] = collect_limit(proc)
        for st in stacks:
            result[st.name] = measure_on(st, out / st.name, start_rate=10.0 if st.name == "pipeline" else 5.0,
                                         load_points=(50,), fresh_for_latency=False,
                                         image_cost=st.name == "pipeline", **kw)
    finally:
        if proc.poll() is None:
            proc.kill()
        for exc in _at_once([st.stop for st in stacks]):
            log.warning("stopping a stack failed: %s", exc)


def _empty(name: str) -> dict:
    return {"name": name, "skipped": True, "max_img_s": 0.0, "ramp": [], "latency": {},
            "peak_rss": {}}


def measure_size(args, size: int, run: str, out: Path) -> dict:
    """One whole bench (limit, pipeline, baseline, figures) at model input ``size``."""
    smoke = args.smoke
    out.mkdir(parents=True, exist_ok=True)
    min_samples = args.min_samples if args.min_samples is not None else (0 if smoke else 1000)
    step_s = args.step_s or (2.0 if smoke else 15.0)
    latency_s = args.latency_s or (2.0 if smoke else 15.0)
    max_steps = args.max_steps or (1 if smoke else 8)

    common = {**args.service_env, "MODEL_INPUT_SIZE": str(size)}
    pipeline_env = {**common}
    baseline_env = {**common, **BASELINE_ENV}
    started = time.time()
    result: dict = {"run": run, "smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                    "machine": {**host_facts(), "versions": versions()}, "load_average_start": load_average(),
                    "command": "python -m experiments.bench" + (" --smoke" if smoke else ""),
                    "input_size": int(common["MODEL_INPUT_SIZE"])}
    env_now = {**os.environ, **pipeline_env}
    # What ran: the engine and network of the limit and of the stacks, and where the model
    # runs (INFERENCE_MODE: the service, or the inference consumer itself).
    recorded = effective_settings(env_now)
    result.update(model_engine=recorded["MODEL_ENGINE"], model=recorded["MODEL"],
                  inference_mode=recorded["INFERENCE_MODE"], store=recorded["STORE"],
                  broker_storage=recorded["STACK_BROKER_STORAGE"])
    result["settings"] = {"pipeline": effective_settings(env_now),
                          "baseline": effective_settings({**env_now, **BASELINE_ENV}),
                          "bench": {"step_s": step_s, "latency_s": latency_s, "growth": args.growth,
                                    "max_steps": max_steps, "per_producer_max": args.per_producer}}

    batches = [1, 8] if smoke else [1, *LIMIT_BATCHES]
    if not smoke:
        log.info("1/3 limit: bare model, batch 1 and %s", "/".join(map(str, LIMIT_BATCHES)))
        result["limit"] = measure_limit(env_now, batches, 6.0)
    else:
        result["limit"] = None  # measured by smoke_run, concurrently with the stacks' start
    limit = result["limit"]
    if limit:
        log.info("limit: batch 1 %.1f img/s, best %.1f img/s at batch %d",
                 limit["batch1_img_s"], limit["best_img_s"], limit["best_batch"])

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    # Searchable, not listable: run as root, STORE=postgres's server runs as the postgres
    # user, who must reach its cluster under this directory (stack/postgres.py).
    workdir.chmod(0o711)
    common_kw = dict(growth=args.growth, max_steps=max_steps, step_s=step_s, latency_s=latency_s,
                     per_producer_max=args.per_producer, warmup=0 if smoke else 60,
                     min_samples=min_samples)
    try:
        if smoke:
            smoke_run(result, env_now, batches, pipeline_env, baseline_env, workdir, out, common_kw)
        else:
            if args.only != "baseline":
                log.info("2/3 pipeline: batched settings, ramping the offered rate")
                result["pipeline"] = measure_stack(
                    "pipeline", pipeline_env, workdir, out / "pipeline",
                    start_rate=args.start_rate or max(10.0, 0.15 * limit["best_img_s"]),
                    image_cost=True, **common_kw)
            else:
                result["pipeline"] = _empty("pipeline")
            if args.only != "pipeline":
                log.info("3/3 baseline: one request, one write, one commit per message")
                result["baseline"] = measure_stack(
                    "baseline", baseline_env, workdir, out / "baseline",
                    start_rate=max(5.0, 0.5 * limit["batch1_img_s"]), **common_kw)
            else:
                result["baseline"] = _empty("baseline")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    limit = result["limit"]
    pipe, base = result["pipeline"]["max_img_s"], result["baseline"]["max_img_s"]
    p99_50 = step_ms(result["pipeline"]["latency"].get("50pct"), "p99")
    result.update(
        limit_batch1_img_s=round(limit["batch1_img_s"], 2),
        limit_best_img_s=round(limit["best_img_s"], 2),
        limit_best_batch=limit["best_batch"],
        pipeline_max_img_s=round(pipe, 2),
        baseline_max_img_s=round(base, 2),
        ratio_to_limit=round(pipe / limit["best_img_s"], 3),
        ratio_to_baseline=round(pipe / base, 3) if base else None,
        p99_ms_at_50pct=p99_50,
        baseline_p99_ms_at_50pct=step_ms(result["baseline"]["latency"].get("50pct"), "p99"),
        load_average_end=load_average(),
        duration_s=round(time.time() - started, 1),
    )
    result.update(issue_figures(result))
    cost = result["pipeline"].get("image_cost") or {}
    result["jpeg640_over_png32"] = cost.get("jpeg640_over_png32")
    result["targets"] = check_targets(result, size)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    run = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    out = args.out or ROOT / "results" / "bench" / run
    # The CIFAR ResNets (MODEL_ENGINE=torch) take 32x32 inputs only.
    sizes = args.sizes or ([32] if args.smoke or args.engine == "torch" else [32, 224])
    log.info("input sizes %s, one whole run each", sizes)
    result = measure_size(args, sizes[0], run, out)
    for size in sizes[1:]:
        log.info("input size %d: the same measurements (its own limit, pipeline, baseline)", size)
        result[str(size)] = measure_size(args, size, run, out / str(size))
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "bench.png")
    point_latest(out)
    print(table(result))
    for size in sizes[1:]:
        print(f"\n--- input {size} px ---")
        print(table(result[str(size)]))
    print(f"\nwritten: {out / 'bench.json'}, {out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
