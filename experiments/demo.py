"""``make demo`` / ``python -m experiments.demo``: the whole pipeline once, on the local stack.

Brings the stack up (unless it already is), runs one producer (300 images at
20 images/s by default), waits for every result and for MongoDB, writes
``results/<run>/{latencies.csv,stages.csv,summary.json,latency_cdf.png}``, points
``results/latest`` at the run, prints a table, brings the stack down again (if it
started it) and exits non-zero if any image was lost.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from pathlib import Path

from analysis.summary import format_table
from common import dataset as datasets
from common.log import setup_logging
from common.settings import DatasetSettings, DemoSettings, StackSettings, with_flags
from experiments.runner import RunFailed, point_latest, run_configuration
from stack.control import down, read_env, stack_dir, supervisor_pid, up
from stack.supervisor import ROOT

log = logging.getLogger(__name__)


def check_dataset() -> None:
    """Fetch/verify the dataset before starting anything: a missing dataset fails in
    seconds with instructions, and a download shows its progress bar here."""

    s = DatasetSettings()
    try:
        datasets.load(s.dataset, s.dataset_source, s.dataset_split, limit=1)
    except datasets.DatasetUnavailable as exc:
        raise RunFailed(str(exc)) from None


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, help="images to send (default DEMO_COUNT, 300)")
    p.add_argument("--rate", type=float, help="images per second (default DEMO_RATE, 20)")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--keep-up", action="store_true", help="leave the stack running afterwards")
    args = p.parse_args(argv)
    demo = with_flags(DemoSettings, p, demo_count=args.count, demo_rate=args.rate)
    stack = with_flags(StackSettings, p)

    try:
        check_dataset()
    except RunFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    d = stack_dir()
    started_here = supervisor_pid(d) is None
    if up(d, timeout_s=stack.stack_up_timeout_s) != 0:
        return 1
    try:
        env = read_env(d / "stack.env")
        run_dir = args.results / time.strftime("demo-%Y%m%d-%H%M%S")
        while run_dir.exists():  # another demo this second: a directory of its own
            run_dir = run_dir.with_name(f"{run_dir.name}-{uuid.uuid4().hex[:4]}")
        # The store outlives a run: a random token keeps this run's producer ids its own
        # (its duplicates are counted over them), whatever ran before in the same second.
        summary = run_configuration(run_dir, env, producers=1, count=demo.demo_count,
                                    rate=demo.demo_rate, desc="demo", run_tag=f"{run_dir.name}-{uuid.uuid4().hex[:6]}")
        point_latest(run_dir)
    except RunFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if started_here and not args.keep_up:
            down(d)
    print(f"\nDemo run {run_dir}:")
    print(format_table(summary))
    print(f"\n  files: {run_dir}/latencies.csv, summary.json, latency_cdf.png (results/latest)")
    ok = summary["lost"] == 0 and summary["results"] == summary["sent"]
    print("  OK: every image came back and is stored once with its prediction" if ok else
          f"  FAILED: {summary['lost']} image(s) lost, "
          f"{summary['sent'] - summary['results']} result(s) missing")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
