"""``python -m bench.producer_setting_cost``: what a producer-side setting costs, in
CPU milliseconds (core-ms) per image of every component, A against B on one stack.

    python -m bench.producer_setting_cost --a KAFKA_LINGER_MS=0 --b KAFKA_LINGER_MS=5 \\
        --producers 4 --rate 100 --seconds 15 --rounds 3 --dataset-source ../shared/data/...

One local stack (temp ``STACK_DIR``, free ports, random weights, without Prometheus and
the dashboard; ``--stack-env`` for its own settings), then rounds that alternate between
the two settings of the producers (A B B A ...): each round is
``experiments.capacity.run_step``, ``--producers`` processes offering ``--rate`` images/s
in all for ``--seconds``, and records the CPU per image of each component (the producers'
whole processes, start included) and the end-to-end latency.  Prints a table with the
median of each, writes ``results/producer-setting-cost/<time>.json``.  A measurement, not a
test: the rounds' spread says how far to trust the difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common.log import setup_logging
from experiments.capacity import load_average, run_step
from stack.control import LocalStack

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def assignment(text: str) -> dict:
    """``NAME=value[,NAME=value...]`` -> {NAME: value}."""
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=value[,NAME=value...], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.producer_setting_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=assignment, required=True, help="the producers' settings of A: NAME=value[,...]")
    p.add_argument("--b", type=assignment, required=True, help="the producers' settings of B: NAME=value[,...]")
    p.add_argument("--producers", type=int, default=4, help="producer processes per round (default 4)")
    p.add_argument("--rate", type=float, default=100.0, help="images/s offered by all of them (default 100)")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per round (default 15)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per setting (default 3)")
    p.add_argument("--stack-env", type=assignment, default={}, help="the stack's own settings: NAME=value[,...]")
    p.add_argument("--dataset-source", default=None, help="DATASET_SOURCE for the producers")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="producer-setting-cost-"))
    env = {"MODEL_WEIGHTS": "random", "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0", **args.stack_env,
           **({"DATASET_SOURCE": args.dataset_source} if args.dataset_source else {})}
    order = []
    for i in range(args.rounds):
        order += ["a", "b"] if i % 2 == 0 else ["b", "a"]
    steps: dict[str, list] = {"a": [], "b": []}
    try:
        with LocalStack(tmp / "stack", env, name="setting-cost") as stack:
            kw = dict(duration=args.seconds, per_producer_max=args.rate / args.producers, stack=stack)
            run_step(tmp / "warm", stack.env, rate=args.rate, tag="warm-up", **kw)  # the model's first batches
            for i, name in enumerate(order):
                step = run_step(tmp / f"r{i}-{name}", {**stack.env, **getattr(args, name)}, rate=args.rate,
                                tag=f"r{i}-{name}", **kw)
                if not step["complete"]:
                    log.warning("round %d (%s): %d of %d images stored with a prediction", i, name,
                                step["stored_with_prediction"], step["sent"])
                steps[name].append(step)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the rounds' run directories; the JSON below keeps the figures

    def median(name: str, get) -> float:
        return round(statistics.median(get(s) for s in steps[name]), 3)

    components = sorted({k for rs in steps.values() for s in rs for k in s["cpu_ms_per_img"]})
    rows = [(c, lambda s, c=c: s["cpu_ms_per_img"].get(c, 0.0)) for c in components]
    rows += [("total", lambda s: sum(s["cpu_ms_per_img"].values())),
             ("e2e p50 ms", lambda s: (s["e2e_ms"] or {}).get("p50", float("nan")))]
    summary = {label: {"a": median("a", get), "b": median("b", get),
                       "a_rounds": [round(get(s), 3) for s in steps["a"]],
                       "b_rounds": [round(get(s), 3) for s in steps["b"]]} for label, get in rows}
    record = {"args": vars(args), "load_average_end": load_average(), "summary": summary, "steps": steps}
    out = ROOT / "results" / "producer-setting-cost"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"A: {args.a}   B: {args.b}   ({args.producers} producers, {args.rate:g} img/s, "
          f"{args.seconds:g} s x {args.rounds} rounds each; core-ms per image unless said; median [rounds])")
    for label, row in summary.items():
        print(f"  {label:<20} A {row['a']:>8.3f} {row['a_rounds']}   B {row['b']:>8.3f} {row['b_rounds']}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
