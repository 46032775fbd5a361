"""``python -m bench.metrics_cost``: what the Prometheus metrics cost, in CPU
milliseconds (core-ms) per image, with METRICS_ENABLED=true against false.

Two local stacks run side by side (temp ``STACK_DIR``s, free ports, random weights,
without Prometheus and the dashboard, so that only the instrumentation is measured,
not the scraping); rounds alternate between them (A B B A ...), each one producer
sending ``--images`` images at ``--rate`` images/s.  A round's cost is the CPU time
(user + system) every component's process tree used during it, plus the producer's,
divided by the images.  Prints the per-round figures and the medians, writes
``results/metrics-cost/<time>.json``.  A measurement, not a test: on a shared machine
the rounds' spread says how much to trust the difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.log import setup_logging
from stack.control import LocalStack

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def run_round(stack: LocalStack, images: int, rate: float, out: Path, tag: str) -> dict:
    before = stack.cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "producer", "--count", str(images), "--rate", str(rate),
                           "--no-progress", "--out", str(out), "--producer-id", tag,
                           "--result-timeout", "300"], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"producer failed: {proc.stderr[-2000:]}")
    time.sleep(1.0)  # the DB consumer stores the last results (off the producer's path)
    after = stack.cpu_seconds()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    producer_s = (used.ru_utime - children.ru_utime) + (used.ru_stime - children.ru_stime)
    per_component = {k: after[k] - before.get(k, 0.0) for k in after}
    total = sum(per_component.values()) + producer_s
    return {"core_ms_per_image": total * 1000 / images, "producer_core_ms_per_image": producer_s * 1000 / images,
            "components_core_ms_per_image": {k: v * 1000 / images for k, v in per_component.items()}}


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per configuration (default 3)")
    p.add_argument("--images", type=int, default=300, help="images per round (default 300)")
    p.add_argument("--rate", type=float, default=50.0, help="images/s per round (default 50)")
    p.add_argument("--dataset-source", default=None, help="DATASET_SOURCE for the producers")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    common = {"MODEL_WEIGHTS": "random", "GUNICORN_WORKERS": "1", "STACK_PROMETHEUS": "0",
              "STACK_DASHBOARD": "0", **({"DATASET_SOURCE": args.dataset_source} if args.dataset_source else {})}
    stacks = {"on": LocalStack(tmp / "on", {**common, "METRICS_ENABLED": "true"}),
              "off": LocalStack(tmp / "off", {**common, "METRICS_ENABLED": "false"})}
    results: dict[str, list] = {"on": [], "off": []}
    try:
        for st in stacks.values():
            st.start()
        for name, st in stacks.items():  # warm-up: first batches trace the model
            run_round(st, min(60, args.images), args.rate, tmp / f"warm-{name}", f"warm-{name}")
        order = []
        for i in range(args.rounds):
            order += ["on", "off"] if i % 2 == 0 else ["off", "on"]
        for i, name in enumerate(order):
            r = run_round(stacks[name], args.images, args.rate, tmp / f"r{i}-{name}", f"r{i}-{name}")
            results[name].append(r)
            log.info("round %d metrics %s: %.2f core-ms/image", i, name, r["core_ms_per_image"])
    finally:
        for st in stacks.values():
            st.stop()
    summary = {name: {"median_core_ms_per_image": statistics.median(r["core_ms_per_image"] for r in rs),
                      "rounds": [round(r["core_ms_per_image"], 3) for r in rs]} for name, rs in results.items()}
    summary["difference_core_ms_per_image"] = (summary["on"]["median_core_ms_per_image"]
                                               - summary["off"]["median_core_ms_per_image"])
    out = ROOT / "results" / "metrics-cost"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "summary": summary, "results": results}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
