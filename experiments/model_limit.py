"""The model's own limit: bare forward passes of the served model (MODEL, MODEL_ENGINE:
ResNet50 on TensorFlow, or a CIFAR ResNet on torch ...) with random weights in one process,
with the service's input size and thread settings, batch 1 and larger batches;
each the best of ``LIMIT_ROUNDS`` interleaved rounds (a ceiling, measured on a
shared machine).  ``make bench`` compares the pipeline with it.

    python -m experiments.model_limit --batches 1 8 16 32 64 --seconds 6

runs the measurement and prints ``LIMIT {json}``; ``start_limit``/``collect_limit``
run it in a child process so the caller never imports TensorFlow or torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_ROUNDS = 3


def limit_worker(batches: list[int], seconds: float) -> None:
    """Runs in a child process: prints one JSON object with images/s per batch size."""
    import numpy as np

    from common.settings import ServiceSettings
    from inference.serving import load_engine_model

    # The service's loader: the engine's threads configured, its runtime only imported.
    loaded = load_engine_model(ServiceSettings().model_copy(update={"model_weights": "random"}))
    rng = np.random.default_rng(0)
    out = {"model": loaded.id, "batches": {}, "rounds": LIMIT_ROUNDS}
    # Images of the model's input size, as the service feeds it (it resizes while decoding,
    # inference.api.decode_image, outside the model call measured here).
    size = loaded.input_size
    inputs = {bs: rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8) for bs in batches}
    for x in inputs.values():
        loaded.predict(x)
        loaded.predict(x)  # warm-up: trace + oneDNN kernels for this shape
    # A ceiling, on a shared machine: the best of several short rounds, the batch sizes
    # interleaved, so that a neighbour's burst does not lower one batch size alone.
    for _round in range(LIMIT_ROUNDS):
        for bs, x in inputs.items():
            n, start, cpu_start = 0, time.perf_counter(), time.process_time()
            while True:
                loaded.predict(x)
                n += bs
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / LIMIT_ROUNDS and n >= 2 * bs:
                    break
            cpu = time.process_time() - cpu_start  # every thread of this process
            best = out["batches"].get(str(bs))
            if best is None or n / elapsed > best["img_s"]:
                out["batches"][str(bs)] = {"img_s": n / elapsed, "ms_per_img": elapsed * 1000 / n,
                                           "core_ms_per_img": cpu * 1000 / n}
    print("LIMIT " + json.dumps(out), flush=True)


def start_limit(env: dict, batches: list[int], seconds: float) -> subprocess.Popen:
    """The limit runs in its own process, so this one never imports TensorFlow or torch."""
    return subprocess.Popen([sys.executable, "-m", "experiments.model_limit",
                             "--batches", *map(str, batches), "--seconds", str(seconds)],
                            cwd=ROOT, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure_limit(env: dict, batches: list[int], seconds: float) -> dict:
    return collect_limit(start_limit(env, batches, seconds))


def collect_limit(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=900)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("LIMIT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"limit measurement failed:\n{stderr[-3000:]}")
    data = json.loads(line[6:])
    per = {int(k): v for k, v in data["batches"].items()}
    best_bs = max((b for b in per if b > 1), key=lambda b: per[b]["img_s"])
    return {"model": data["model"], "per_batch": per, "batch1_img_s": per[1]["img_s"],
            "best_batch": best_bs, "best_img_s": per[best_bs]["img_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.model_limit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per batch size, all rounds")
    args = p.parse_args(argv)
    limit_worker(args.batches, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
