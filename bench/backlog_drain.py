"""``python -m bench.backlog_drain``: how long the pipeline takes to drain a backlog on the
broker's S3 storage, from two checkouts side by side.

For each checkout in turn: its own local stack (``STACK_BROKER_STORAGE=s3``, a fresh stack
directory under ``--out``), three producers at ``--rate`` images/s in all, both consumer
groups paused for ``--down`` seconds while the producers go on (the backlog a restart
leaves), then resumed; the figures are the backlog and the seconds until each group's lag
is back within the soak's band (tests/soak/verify.py ``zero_bands``), read from the broker
every 2 s.  The producers keep sending throughout, as they do while the soak's
components restart, so the drain runs at what the host has left over the offered load.
Each checkout uses its own venv and code: only the code differs.

    .venv/bin/python -m bench.backlog_drain --base ../checkout-old --new . --rate 89 --down 150

A benchmark, not a test: it prints figures and writes them to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Run in each checkout, with its venv: the pause, the producers, the lag readings.
PROBE = r'''
import json, os, subprocess, sys, time
from common.settings import KafkaSettings
from stack.broker import S3_FETCH_MAX_WAIT_MS
from tests.soak import verify
from tests.soak.sampler import GROUPS, Lag

rate, down, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
py = sys.executable
def stack(*a):
    subprocess.run([py, "-m", "stack", *a], check=True, stdout=subprocess.DEVNULL)
lag = Lag(KafkaSettings())
producers = [subprocess.Popen([py, "-m", "producer", "--rate", str(rate / 3), "--duration", str(down + 200),
                               "--dataset", "synthetic", "--no-progress", "--result-timeout", "60",
                               "--out", f"{out}/producer-{i}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(3)]
time.sleep(30)
for group in ("inference-consumer", "db-consumer"):
    stack("pause", group)
time.sleep(down)
backlog = lag.read()
for group in ("inference-consumer", "db-consumer"):
    stack("resume", group)
band = verify.zero_bands(rate, S3_FETCH_MAX_WAIT_MS / 1000, GROUPS)  # what the stack gives its clients
t0, back, samples = time.time(), {}, []
while len(back) < len(band) and time.time() - t0 < 900:
    now = lag.read()
    samples.append({"t": round(time.time() - t0, 1), **now})
    print(f"  {samples[-1]['t']:6.1f} s  " + "  ".join(f"{g} {v}" for g, v in now.items()), flush=True)
    for g, v in now.items():
        # after the resumed consumers rejoined (the lag first rises, then falls)
        if v is not None and v <= band[g] and g not in back and time.time() - t0 > 8:
            back[g] = round(time.time() - t0, 1)
    time.sleep(2)
for p in producers:
    p.wait()
print(json.dumps({"backlog": backlog, "band": band, "back_after_s": back, "samples": samples}))
'''


def drain(tree: Path, stack_dir: Path, rate: float, down: float) -> dict:
    """One checkout's run: its stack up, the pause and the drain, its stack down."""
    env = {**os.environ, "STACK_DIR": str(stack_dir), "STACK_BROKER_STORAGE": "s3",
           # The producers outside the stack read their settings from here; the stack turns
           # idempotence off on s3rver (stack/broker.py), and so do they.
           "KAFKA_IDEMPOTENCE": "false", "PYTHONPATH": str(tree)}
    py = str(tree / ".venv" / "bin" / "python")
    subprocess.run([py, "-m", "stack", "up"], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        proc = subprocess.run([py, "-c", PROBE, str(rate), str(down), str(stack_dir)], cwd=tree, env=env,
                              stdout=subprocess.PIPE, text=True, check=True)
    finally:
        subprocess.run([py, "-m", "stack", "down"], cwd=tree, env=env, stdout=subprocess.DEVNULL)
    *progress, last = proc.stdout.strip().splitlines()
    print("\n".join(progress[-3:]))
    return json.loads(last)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the checkout to compare with (its own .venv)")
    ap.add_argument("--new", type=Path, default=Path("."), help="this checkout (default .)")
    ap.add_argument("--rate", type=float, default=89.0, help="images/s offered throughout (default 89)")
    ap.add_argument("--down", type=float, default=150.0, help="seconds both consumer groups stay paused")
    ap.add_argument("--out", type=Path, default=Path("results/bench") / time.strftime("drain-%Y%m%d-%H%M%S"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, tree in (("base", args.base.resolve()), ("new", args.new.resolve())):
        commit = subprocess.run(["git", "log", "--oneline", "-1"], cwd=tree, capture_output=True,
                                text=True).stdout.strip()[:60]
        print(f"{name}: {commit}: {args.rate:g} img/s, both consumer groups paused {args.down:g} s", flush=True)
        figures[name] = {"commit": commit, **drain(tree, args.out / f"stack-{name}", args.rate, args.down)}
    print(f"\n{'':6} {'backlog (images)':>18} {'inference back after':>22} {'DB writer back after':>22}")
    for name, f in figures.items():
        back = f["back_after_s"]
        print(f"{name:6} {f['backlog'].get('iot-inference')!s:>18} {back.get('iot-inference', '-')!s:>20} s "
              f"{back.get('iot-db-writer', '-')!s:>20} s")
    (args.out / "drain.json").write_text(json.dumps({"rate": args.rate, "down_s": args.down, **figures}, indent=1))
    print(f"\n{args.out / 'drain.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
