"""``python -m bench.versions``: two versions of the code through ``make bench``'s pipeline
stack on one machine, interleaved A B B A, and the CPU per stored image at saturation.

Each run is ``python -m experiments.bench --only pipeline`` from the root of one checkout
(its own venv, its own stack on free ports), so what differs is the code only.  At the
ramp's step with the most images stored per second it prints each component's CPU per
stored image, and the service's own share: the service's minus the bare model's
(``limit``'s best batch, measured in the same run).  Interleaving spreads a machine's drift
over both versions; two runs each show the spread between repeats.

    .venv/bin/python -m bench.versions --base ../checkout-53f0037 --new . --out results/bench/versions

``--report DIR`` prints the table of runs already made.  A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ("inference-consumer", "db-consumer", "inference", "kafka")


def run_one(checkout: Path, out: Path, extra: list[str]) -> int:
    """``experiments.bench`` from ``checkout`` with its own venv, writing into ``out``."""
    python = checkout / ".venv" / "bin" / "python"
    argv = [str(python), "-m", "experiments.bench", "--only", "pipeline", "--out", str(out), *extra]
    print(f"[{time.strftime('%H:%M:%S')}] {out.name}: {checkout} (load {os.getloadavg()[0]:.2f})", flush=True)
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.run(argv, cwd=checkout, stdout=log, stderr=subprocess.STDOUT).returncode


def saturation(bench: dict) -> dict:
    """The ramp step with the most images stored per second, and the service's own CPU."""
    step = max(bench["pipeline"]["ramp"], key=lambda s: s.get("throughput_img_s") or 0.0)
    limit = bench["limit"]["per_batch"][str(bench["limit"]["best_batch"])]["core_ms_per_img"]
    cpu = step["cpu_ms_per_img"]
    return {"stored_img_s": step["throughput_img_s"], **{c: cpu.get(c) for c in COLUMNS},
            "bare_model": limit, "service_own": cpu["inference"] - limit}


def report(root: Path) -> list[tuple[str, dict]]:
    rows = [(d.name, saturation(json.loads((d / "bench.json").read_text())))
            for d in sorted(root.iterdir()) if not d.is_symlink() and (d / "bench.json").is_file()]
    print("| run | stored img/s | inference consumer | DB writer | service | bare model | "
          "service's own | broker |   (core-ms per stored image at saturation)")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['stored_img_s']:.1f} | {r['inference-consumer']:.2f} | {r['db-consumer']:.2f} | "
              f"{r['inference']:.2f} | {r['bare_model']:.2f} | {r['service_own']:.2f} | {r['kafka']:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, help="checkout of the version to compare against (with .venv)")
    ap.add_argument("--new", type=Path, default=Path("."), help="checkout of the new version (default .)")
    ap.add_argument("--out", type=Path, default=Path("results/bench/versions"))
    ap.add_argument("--report", type=Path, help="only print the table of the runs in this folder")
    ap.add_argument("--bench-args", default="--sizes 32 --latency-s 5 --min-samples 200",
                    help="passed to experiments.bench (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.report:
        return 0 if report(args.report) else 1
    if args.base is None:
        ap.error("--base is required (or --report)")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, checkout in (("base-1", args.base), ("new-1", args.new), ("new-2", args.new), ("base-2", args.base)):
        failed += run_one(checkout.resolve(), (args.out / name).resolve(), args.bench_args.split()) != 0
    report(args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
