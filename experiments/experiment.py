"""``make experiment`` / ``python -m experiments.experiment``: latency for 1..N producers.

For each producer count in ``--producers`` it runs that many producers at once
(each ``--images`` images at ``--rate`` images/s), waits until every result is back
and every image is stored, and writes one run directory per configuration
(``<out>/<N>-producers/``: latencies.csv, stages.csv, summary.json,
latency_cdf.png), an ``experiment.json`` describing the sweep, and the analysis of
all of them (``python -m analysis``) into ``<out>/``.

Runs on the local stack by default (started if needed, stopped after if it was
started here).  With ``KAFKA_BOOTSTRAP_SERVERS`` and ``MONGO_URI`` set (or
``--kafka`` / ``--mongo``), it measures that deployed stack instead; the Ansible
experiment playbook runs exactly this on the producer VM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import requests
from pydantic import SecretStr

from analysis.cli import main as analyse
from common.log import setup_logging
from common.settings import mask
from experiments.runner import RunFailed, run_configuration
from stack.control import down, read_env, stack_dir, supervisor_pid, up

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def host_facts() -> dict:
    mem_kb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"hostname": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "memory_gib": round(mem_kb / 2**20, 1) if mem_kb else None}


def versions() -> dict:
    out = {}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "kafka-python", "pymongo", "flask",
                "gunicorn", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_info(env: dict) -> dict | None:

    url = env.get("INFERENCE_URL", "").split(",")[0]
    if not url:
        return None
    token = os.environ.get("INFERENCE_TOKEN", "")
    try:
        r = requests.get(f"{url.rstrip('/')}/v1/model", timeout=5,
                         headers={"Authorization": f"Bearer {token}"} if token else {})
        return r.json() if r.ok else None
    except (requests.RequestException, ValueError):
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--producers", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="producer counts to run, one configuration each (default 1 2 3 4)")
    p.add_argument("--images", type=int, default=200, help="images per producer (default 200)")
    p.add_argument("--rate", type=float, default=10.0, help="images/s per producer (default 10)")
    p.add_argument("--out", type=Path, help="experiment directory (default results/experiment-<time>)")
    p.add_argument("--kafka", help="bootstrap servers of a deployed stack")
    p.add_argument("--mongo", help="MongoDB URI of a deployed stack")
    p.add_argument("--inference-url", help="service URL of a deployed stack (for the model id)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between configurations")
    p.add_argument("--log-x", action="store_true", help="log-scaled x axis in the CDF")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    out = args.out or ROOT / "results" / time.strftime("experiment-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in {"KAFKA_BOOTSTRAP_SERVERS": args.kafka or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                             "MONGO_URI": args.mongo or os.environ.get("MONGO_URI"),
                             "INFERENCE_URL": args.inference_url or os.environ.get("INFERENCE_URL")
                             }.items() if v}
    deployed = "KAFKA_BOOTSTRAP_SERVERS" in env and "MONGO_URI" in env
    stack_started = False
    if not deployed:

        d = stack_dir()
        stack_started = supervisor_pid(d) is None
        if up(d, timeout_s=float(os.environ.get("STACK_UP_TIMEOUT_S", 420))) != 0:
            return 1
        env = read_env(d / "stack.env")
    log.info("experiment: producers %s x %d images at %g img/s -> %s\n  %s", args.producers,
             args.images, args.rate, out, "\n  ".join(
                 f"{k}={mask(SecretStr(v)) if k == 'MONGO_URI' else v}" for k, v in env.items()))
    record = {"started_at": time.time(), "target": "deployed" if deployed else "local-stack",
              "settings": {"producers": args.producers, "images_per_producer": args.images,
                           "rate_per_producer": args.rate},
              "model": model_info(env), "versions": versions(), "host": host_facts(), "runs": []}
    status = 0
    try:
        for i, n in enumerate(args.producers):
            run_dir = out / f"{n}-producer{'s' if n > 1 else ''}"
            summary = run_configuration(run_dir, env, producers=n, count=args.images,
                                        rate=args.rate, desc=f"{n} producer{'s' if n > 1 else ''}",
                                        extra={"experiment": out.name})
            e2e = summary.get("e2e_ms") or {}
            log.info("%d producer(s): sent %d, results %d, lost %s, p50 %s ms, p95 %s ms, %.1f img/s",
                     n, summary["sent"], summary["results"], summary["lost"],
                     f"{e2e.get('p50', float('nan')):.1f}", f"{e2e.get('p95', float('nan')):.1f}",
                     summary.get("throughput_img_s") or 0)
            record["runs"].append({"producers": n, "dir": run_dir.name, "summary": summary})
            if summary["lost"]:
                status = 1
            if i + 1 < len(args.producers):
                time.sleep(args.pause)
    except RunFailed as exc:
        print(f"experiment failed: {exc}", file=sys.stderr)
        return 1
    finally:
        record["finished_at"] = time.time()
        if record["model"] is None:  # no service URL or token here (the producer VM): the results say
            models = sorted({r["summary"]["model"] for r in record["runs"] if r["summary"].get("model")})
            record["model"] = {"id": ", ".join(models), "source": "result messages"} if models else None
        (out / "experiment.json").write_text(json.dumps(record, indent=2) + "\n")
        if stack_started:
            down(d)

    analyse_args = [str(out / r["dir"]) for r in record["runs"]] + ["--out", str(out)]
    analyse(analyse_args + (["--log-x"] if args.log_x else []))
    print(f"\nexperiment written to {out} (experiment.json, latency_cdf.png, percentiles.csv, "
          "stages.png, throughput.png)")
    return status


if __name__ == "__main__":
    sys.exit(main())
