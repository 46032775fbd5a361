"""``make experiment`` / ``python -m experiments.experiment``: latency for 1..N producers.

For each producer count in ``--producers`` it runs that many producers at once, waits
until every result is back and every image is stored, and writes the configuration's run
directory (``<out>/<N>-producers/``), ``experiment.json`` and the analysis of all of them
into ``<out>/``.  With ``--repeat K`` each configuration runs K times, interleaved (1, 2,
3, 4, 1, 2, 3, 4 ... producers), each trial in ``<N>-producers/trial-<k>/`` and the
configuration's directory their pooled view, with a measured settle between trials
(experiments/repeats.py, experiments/settle.py).  On the local stack by default (started
if needed, stopped after if started here); with ``KAFKA_BOOTSTRAP_SERVERS`` and the store
STORE names set (``MONGO_URI``; ``POSTGRES_DSN`` or ``POSTGRES_HOST``; ``COUCHDB_URL``), or
``--kafka`` / ``--mongo``, on that deployed stack: the Ansible experiment stage runs exactly
this (docs/USAGE.md, "Measuring latency").
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
import uuid
from pathlib import Path

from analysis.cli import main as analyse
from common.log import setup_logging
from common.settings import (InferenceClientSettings, KafkaSettings, MongoSettings, StackSettings, StoreSettings,
                             given, mask_env, secret, with_flags)
from analysis.stats import find_knee
from experiments.capacity import PAST_KNEE, PER_PRODUCER_MAX, choose_rate, load_average, ramp, sweep_basis
from experiments.facts import dead_letters, host_facts, model_info, store_info, versions
from experiments.repeats import Trials, config_name, p95_widths, schedule, stopping_rule
from experiments.runner import RunFailed
from experiments.settle import KafkaLag, Settler, stack_cpu
from stack.control import down, read_env, stack_dir, supervisor_pid, up
from stack.stores import external_endpoints

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def measure_rate(out: Path, env: dict, args, record: dict) -> float:
    """A short ramp to the pipeline's capacity and its knee, then the per-producer rate of
    the sweep (``sweep_basis``, ``choose_rate``)."""
    log.info("measuring the pipeline's capacity: a ramp from %g img/s (x1.6 per %g s step, then two steps "
             "between the highest load kept up with and the lowest not) ...",
             args.ramp_start, args.ramp_step_s)
    measured = ramp(out / "capacity", env, start_rate=args.ramp_start, growth=1.6, max_steps=8,
                    step_s=args.ramp_step_s, per_producer_max=PER_PRODUCER_MAX,
                    tag=f"capacity-{out.name}-{record['token']}")
    basis, basis_from = sweep_basis(measured)
    rate = choose_rate(basis, args.producers)
    record["capacity"] = {
        "img_s": measured.best, "past_knee": PAST_KNEE,
        # the ramp's own bracket of the knee: highest offer kept up with, lowest not (img/s)
        "knee_between_img_s": measured.knee_between,
        "sized_from": basis_from, "sized_from_img_s": basis,
        "rule": (f"rate per producer = {PAST_KNEE:g} x {basis_from} ({basis:g} img/s"
                 + (", the geometric mean of the ramp's bracket" if basis_from == "knee" else "")
                 + f") / {max(args.producers)} producers"),
        "ramp": [{k: s.get(k) for k in ("offered_img_s", "producers", "sent", "stored_with_prediction",
                                         "throughput_img_s", "e2e_ms", "complete")} for s in measured.steps]}
    record["settings"]["rate_per_producer"] = rate
    log.info("capacity %.1f img/s, knee between %s img/s offered -> sized from the %s (%.1f img/s): "
             "%.2f img/s per producer: %s img/s offered", measured.best,
             " and ".join(f"{v:g}" for v in measured.knee_between) if measured.knee_between else "(not bracketed)",
             basis_from, basis, rate, ", ".join(f"{n * rate:.1f}" for n in args.producers))
    return rate


def until_ci_done(record: dict, out: Path, args, rounds: int) -> bool:
    """The stopping rule of ``--until-ci`` after ``rounds`` rounds: records where it stands
    in ``record["stopping"]``; True when it is met or the cap is reached."""
    widths = p95_widths(out, [config_name(n) for n in args.producers])
    met = stopping_rule(widths, args.until_ci)
    record["stopping"] = {"rule": f"every p95's 95 % interval narrower than {args.until_ci:g} % of the p95",
                          "until_ci_pct": args.until_ci, "max_repeat": args.max_repeat, "rounds": rounds,
                          "met": met, "p95": widths}
    log.info("after %d round(s): p95 interval widths %s: %s", rounds,
             ", ".join(f"{k} {w and w['width_pct']} %" for k, w in widths.items()),
             "rule met" if met else ("cap reached, rule NOT met" if rounds >= args.max_repeat else "one more round"))
    return met or rounds >= args.max_repeat


def local_stack_of(env: dict) -> Path | None:
    """The directory of the local stack that serves ``env``'s Kafka (the stack this machine
    runs, given by its endpoints as the tests do), or None: a deployed stack."""
    d = stack_dir()
    try:
        running = supervisor_pid(d) is not None and read_env(d / "stack.env").get(
            "KAFKA_BOOTSTRAP_SERVERS") == env.get("KAFKA_BOOTSTRAP_SERVERS")
    except OSError:
        running = False
    return d if running else None


def make_settler(env: dict, stack: Path | None, max_s: float) -> Settler:
    """The settle between trials: consumer lag from Kafka, and the stack's CPU where the stack
    is local (``stack``: its directory); what cannot be measured is left out and recorded so."""
    try:
        lag = KafkaLag(env)
    except Exception as exc:  # noqa: BLE001 - no admin access (ACLs), broker away: settle without it
        log.warning("consumer lag not measurable (%s): the settle between trials waits for the store and CPU", exc)
        lag = None
    return Settler(lag or (lambda: None), stack_cpu(stack) if stack else None, max_s=max_s)


def cdf_title(record: dict) -> str:
    rate = record["settings"]["rate_per_producer"]
    parts = [f"{rate:g} img/s per producer"]
    if record["capacity"]:
        parts.append(f"measured capacity {record['capacity']['img_s']:.1f} img/s")
        if record["capacity"].get("knee_between_img_s"):
            low, high = record["capacity"]["knee_between_img_s"]
            parts.append(f"ramp's knee {low:g}-{high:g} img/s")
    if record["knee"]:
        parts.append(f"knee at {record['knee']['producers']} producers")
    return "End-to-end latency CDF: " + ", ".join(parts)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--producers", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="producer counts to run, one configuration each (default 1 2 3 4)")
    p.add_argument("--images", type=int, default=200, help="images per producer (default 200)")
    p.add_argument("--rate", type=float, default=None,
                   help="images/s per producer (default: chosen from a short ramp run first, so that the most "
                        f"producers offer {PAST_KNEE:g}x the load at the knee it brackets, or its "
                        "capacity where it brackets none: just past the knee)")
    p.add_argument("--ramp-step-s", type=float, default=8.0,
                   help="seconds per step of the capacity ramp (default 8)")
    p.add_argument("--ramp-start", type=float, default=10.0,
                   help="first offered rate of the capacity ramp, images/s (default 10; x1.6 per step)")
    p.add_argument("--out", type=Path, help="experiment directory (default results/experiment-<time>)")
    p.add_argument("--kafka", help="bootstrap servers of a deployed stack")
    p.add_argument("--mongo", help="MongoDB URI of a deployed stack")
    p.add_argument("--inference-url", help="service URL of a deployed stack (for the model id)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="trials per configuration, interleaved: 1, 2, 3, 4, 1, 2, 3, 4 ... producers (default 1)")
    p.add_argument("--until-ci", type=float, default=None, metavar="P",
                   help="after the --repeat rounds (2 at least), add rounds until every configuration's p95 has a "
                        "95 %% interval narrower than P %% of its value, or --max-repeat rounds ran; the report "
                        "says whether the rule was met")
    p.add_argument("--max-repeat", type=int, default=10, metavar="CAP",
                   help="with --until-ci: the most rounds (default 10)")
    p.add_argument("--settle-max-s", type=float, default=120.0,
                   help="longest wait after a trial for the pipeline to settle: consumer lag zero, every image "
                        "stored, the stack's CPU back to idle (default 120; how long it took is recorded)")
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds to wait between trials after the measured settle (default 0)")
    p.add_argument("--log-x", action="store_true", help="log-scaled x axis in the CDF")
    return p


def main(argv=None) -> int:
    setup_logging()
    p = make_parser()
    args = p.parse_args(argv)
    if args.repeat < 1 or args.max_repeat < 2 or (args.until_ci is not None and args.until_ci <= 0):
        p.error("--repeat must be at least 1, --max-repeat at least 2, --until-ci a positive per cent")
    # A deployed stack's addresses, from the flags or the environment (set at all: deployed).
    kafka = with_flags(KafkaSettings, p, kafka_bootstrap_servers=args.kafka)
    mongo = with_flags(MongoSettings, p, mongo_uri=args.mongo)
    client = with_flags(InferenceClientSettings, p, inference_url=args.inference_url)
    stack = with_flags(StackSettings, p)
    out = args.out or ROOT / "results" / time.strftime("experiment-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with_flags(StoreSettings, p)  # an invalid STORE is a usage error here, not deep in a reader
    mongo_uri = given(mongo, "mongo_uri")
    # The deployed store: --mongo, else the one STORE names when its server is given.
    store = ({"STORE": "mongodb", "MONGO_URI": mongo_uri.get_secret_value()} if args.mongo
             else external_endpoints())
    env = {k: v for k, v in {"KAFKA_BOOTSTRAP_SERVERS": given(kafka, "kafka_bootstrap_servers"),
                             "INFERENCE_URL": given(client, "inference_url"), **(store or {})}.items() if v}
    deployed = "KAFKA_BOOTSTRAP_SERVERS" in env and store is not None
    stack_started = False
    if not deployed:
        d = stack_dir()
        stack_started = supervisor_pid(d) is None
        if up(d, timeout_s=stack.stack_up_timeout_s) != 0:
            return 1
        env = read_env(d / "stack.env")
    log.info("experiment: producers %s x %d images at %s -> %s\n  %s", args.producers, args.images,
             f"{args.rate:g} img/s" if args.rate else "a rate chosen from the measured capacity", out,
             mask_env("\n".join(f"{k}={v}" for k, v in env.items())).replace("\n", "\n  "))
    record = {"started_at": time.time(), "target": "deployed" if deployed else "local-stack",
              "settings": {"producers": args.producers, "images_per_producer": args.images,
                           "rate_per_producer": args.rate, "rate_from": "given" if args.rate else "capacity",
                           "repeat": args.repeat, "order": "interleaved", "until_ci_pct": args.until_ci,
                           "max_repeat": args.max_repeat if args.until_ci is not None else None},
              "load_average_start": load_average(),
              # In every producer id of this experiment: the store keeps documents across experiments,
              # and an experiment directory's name may be used again.
              "token": uuid.uuid4().hex[:6],
              "model": model_info(env, secret(client.inference_token)), "versions": versions(), "host": host_facts(),
              "store": store_info(env),
              "capacity": None, "knee": None, "runs": []}
    status = 0
    settler = make_settler(env, local_stack_of(env), args.settle_max_s)
    try:
        rate = args.rate or measure_rate(out, env, args, record)
        ramp_record = record["capacity"] or {}  # the ramp's figures; none with --rate
        record["settle_baseline"] = settler.baseline()
        trials = Trials(out, args.producers, env, settler, count=args.images, rate=rate, token=record["token"],
                        extra={"experiment": out.name, "capacity_img_s": ramp_record.get("img_s"),
                               "ramp_knee_between_img_s": ramp_record.get("knee_between_img_s")})
        # Whole rounds only: every configuration has the same trials, paired round by round.
        least = max(args.repeat, 2 if args.until_ci is not None else 1)
        for round_no in itertools.count(1):
            for _round, n in schedule(args.producers, range(round_no, round_no + 1)):
                if trials.order and args.pause:
                    time.sleep(args.pause)
                trial = trials.run(round_no, n)
                record["runs"] = trials.runs()
                if trial["settle"].get("stored") is False:
                    status = 1
            if round_no >= least and (args.until_ci is None or until_ci_done(record, out, args, round_no)):
                break
    except RunFailed as exc:
        print(f"experiment failed: {exc}", file=sys.stderr)
        return 1
    finally:
        settler.close()
        record["finished_at"] = time.time()
        record["load_average_end"] = load_average()
        # What the pipeline dead-lettered meanwhile (a clean run has none; images lost are in each summary).
        record["dead_letters"] = dead_letters(env, record["started_at"])
        knee = find_knee([{"producers": r["producers"], "offered_img_s": r["summary"].get("offered_img_s"),
                           "throughput_img_s": r["summary"].get("result_rate_img_s")} for r in record["runs"]])
        record["knee"] = knee and {**knee, "rule": "the first load whose stored rate is below 95 % of the "
                                                   "offered rate"}
        if record["model"] is None:  # no service URL or token here (the producer VM): the results say
            models = sorted({r["summary"]["model"] for r in record["runs"] if r["summary"].get("model")})
            record["model"] = {"id": ", ".join(models), "source": "result messages"} if models else None
        (out / "experiment.json").write_text(json.dumps(record, indent=2) + "\n")
        if stack_started:
            down(d)

    analyse_args = [str(out / r["dir"]) for r in record["runs"]] + ["--out", str(out)]
    analyse(analyse_args + (["--log-x"] if args.log_x else []) + ["--title", cdf_title(record)])
    stop = record.get("stopping")
    if stop:
        print(f"\nstopping rule ({stop['rule']}): {'met' if stop['met'] else 'NOT met'} after "
              f"{stop['rounds']} round(s)" + ("" if stop["met"] else f" (the cap, --max-repeat {stop['max_repeat']})"))
    print(f"\nexperiment written to {out}: report.html (the whole experiment on one page), experiment.json, "
          "percentiles.csv, differences.csv, latency_cdf.png, stages.png, throughput.png")
    return status


if __name__ == "__main__":
    sys.exit(main())
