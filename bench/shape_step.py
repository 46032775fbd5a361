"""``python -m bench.shape_step``: what the dynamic batcher's shape step costs and saves.

The batcher calls the model only with the sizes of inference.batcher.model_sizes (1 to 8
and the multiples of 8), so a worker warms 15 sizes instead of every size up to
MODEL_BATCH_MAX_IMAGES.  Two figures, from the service's own model (inference.serving
load_engine_model, the settings of the environment: the soak's untrained 32 px ResNet50
by default):

1. **Warm-up**: one call per size, over every size (1..max: model_sizes with a step of 1,
   as before the step) against model_sizes, each in a fresh process (kernels are built
   once per process), alternated A B B A: seconds and the worker's resident memory after.
2. **A batch of an unwarmed size** (9..max-1, not a multiple of 8) run whole, against
   padded with blank images by the batcher's own call (DynamicBatcher._run_sized), and
   against split in two calls (its largest multiple of 8 and the rest: the alternative
   not taken), every size warmed, rounds interleaved: images/s (real images only) and the
   ratios.

A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def _model():
    from common.settings import ServiceSettings
    from inference.serving import load_engine_model

    s = ServiceSettings()
    return load_engine_model(s), s.model_batch_max_images


def warm(every_size: bool) -> dict:
    """In this (fresh) process: load the model, warm it, report seconds and RSS."""
    import psutil

    from inference.batcher import SHAPE_STEP, model_sizes

    loaded, max_batch = _model()
    sizes = model_sizes(max_batch, step=1 if every_size else SHAPE_STEP)
    started = time.perf_counter()
    for n in sizes:
        loaded.predict(np.zeros((n, loaded.input_size, loaded.input_size, 3), dtype=np.uint8))
    return {"sizes": len(sizes), "images": sum(sizes), "seconds": round(time.perf_counter() - started, 2),
            "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1)}


def split_cost(rounds: int) -> dict:
    from inference.batcher import DynamicBatcher

    loaded, max_batch = _model()
    batcher = DynamicBatcher(loaded.predict, max_batch=max_batch, max_delay_s=0.0)  # its padding, not a copy
    odd = [n for n in range(9, max_batch) if n % 8]
    rng = np.random.default_rng(0)
    batches = {n: rng.integers(0, 256, (n, loaded.input_size, loaded.input_size, 3), dtype=np.uint8) for n in odd}
    for n in range(1, max_batch + 1):  # every size warmed: only the calls differ
        loaded.predict(np.zeros((n, loaded.input_size, loaded.input_size, 3), dtype=np.uint8))
    took = {"whole": 0.0, "split": 0.0, "pad": 0.0}
    for r in range(rounds):
        for way in (("whole", "split", "pad") if r % 2 == 0 else ("pad", "split", "whole")):
            started = time.perf_counter()
            for n, x in batches.items():
                if way == "whole":
                    loaded.predict(x)
                elif way == "pad":
                    batcher._run_sized(x)
                else:  # the alternative not taken: the largest multiple of 8, then the rest
                    loaded.predict(x[:n - n % 8]), loaded.predict(x[n - n % 8:])
            took[way] += time.perf_counter() - started
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{w} {t:.1f}s" for w, t in took.items()) + " so far", flush=True)
    batcher.stop()
    images = sum(odd) * rounds
    out = {way: round(images / s, 1) for way, s in took.items()}
    return {"sizes": odd, "images_per_way": images, "img_s": out, "split_over_whole": round(out["split"] / out["whole"], 3),
            "pad_over_whole": round(out["pad"] / out["whole"], 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds of the split measurement")
    ap.add_argument("--warm-runs", type=int, default=2, help="fresh processes per warm-up way (A B B A ...)")
    ap.add_argument("--child", choices=["every", "step"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(warm(args.child == "every")))
        return
    runs: dict[str, list] = {"every": [], "step": []}
    for i in range(args.warm_runs):
        for way in (("every", "step") if i % 2 == 0 else ("step", "every")):
            out = subprocess.run([sys.executable, "-m", "bench.shape_step", "--child", way],
                                 capture_output=True, text=True, check=True)
            runs[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"warm-up, {way}: {runs[way][-1]}", flush=True)
    for way, rows in runs.items():
        secs = sorted(r["seconds"] for r in rows)
        print(f"warm-up {way:5}: {rows[0]['sizes']} sizes, {rows[0]['images']} images, "
              f"median {secs[len(secs) // 2]:.2f}s, RSS {[r['rss_mib'] for r in rows]} MiB")
    print("a batch of an unwarmed size, whole against padded and split (every size warmed):", flush=True)
    cost = split_cost(args.rounds)
    print(f"whole {cost['img_s']['whole']} img/s, split {cost['img_s']['split']}, padded to a multiple of 8 "
          f"{cost['img_s']['pad']}: split/whole {cost['split_over_whole']}, pad/whole {cost['pad_over_whole']} "
          f"over sizes 9..{cost['sizes'][-1]} not multiples of 8 (images/s counts the real images only)")


if __name__ == "__main__":
    main()
