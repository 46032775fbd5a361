"""``python -m bench.runtime_compare``: candidate model runtimes against the reference.

The reference is the service's own serving function (inference.model, TensorFlow with
oneDNN, TF's thread settings).  Each candidate runs the same Keras model on the same
images (the CIFAR sample when DATASET_SOURCE is set, else random pixels): its
predictions are compared with the reference's (max |difference| of the probabilities,
share of identical top-1 labels) and its speed measured in interleaved rounds at batch 1
and a larger batch (images/s, best of the rounds).  A runtime is adopted only where the
predictions are identical within the stated tolerance and it is faster; TensorFlow stays
the reference.  A benchmark, not a test.

Candidates here: XLA (``tf.function(jit_compile=True)``), bfloat16 (mixed_bfloat16 policy),
and, where their packages are installed (else reported "not installed" and skipped), the
same Keras model converted by inference.runtimes: ONNX Runtime (tf2onnx; ``onnxruntime``),
OpenVINO in float32 (``openvino``) and at the CPU plugin's default precision, bfloat16 on
AVX512_BF16/AMX CPUs (``openvino_bf16``); each with the thread count TensorFlow uses.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def images(n: int, size: int = 32) -> np.ndarray:
    """``n`` 32x32 images (the CIFAR sample or random pixels) resized to the model's input
    ``size`` as the service resizes them (inference.api.decode_image: PIL, bilinear), before
    any clock runs: the serving function takes images of its input size."""
    from common.settings import DatasetSettings

    source = DatasetSettings().dataset_source
    if source:
        from common.dataset import load

        x = np.asarray(load("cifar10", source, limit=n).images[:n], dtype=np.uint8)
    else:
        x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    if size == 32:
        return x
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
                     for img in x])


def speed(predict, x: np.ndarray, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2 * len(x):
        predict(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def converted(keras_model, size: int, intra_threads: int) -> dict:
    """The inference.runtimes engines built from ``keras_model`` (same weights), those installed."""
    from inference import runtimes as rt

    out = {}
    for name, engine, build in (
            ("onnxruntime", "onnxruntime", lambda t: rt.onnxruntime_predict(keras_model, size, threads=t)),
            ("openvino", "openvino", lambda t: rt.openvino_predict(keras_model, size, threads=t)),
            ("openvino_bf16", "openvino", lambda t: rt.openvino_predict(keras_model, size, threads=t,
                                                                        precision="bf16"))):
        if not rt.available(engine):
            print(f"{name}: not installed (pip install -r requirements/runtime-{engine}.txt), skipped")
            continue
        start = time.perf_counter()
        out[name] = build(intra_threads)
        print(f"{name}: converted in {time.perf_counter() - start:.1f} s")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runtime_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32, help="model input size (32 or 224)")
    p.add_argument("--batch", default="32",
                   help="the larger batch sizes, comma-separated (default 32), e.g. 16,64")
    p.add_argument("--images", type=int, default=256, help="images compared (default 256)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="per round and batch size")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |probability difference| accepted")
    args = p.parse_args(argv)
    batches = (1, *sorted({int(b) for b in str(args.batch).split(",") if b.strip()} - {1}))

    import tensorflow as tf

    from common.settings import ServiceSettings
    from inference import model as m

    s = ServiceSettings()
    m.configure_threads(s.tf_intra_op_threads, s.tf_inter_op_threads)
    tf.keras.utils.set_random_seed(m.RANDOM_SEED)
    keras_model = m.build_cifar_resnet(args.size)
    runtimes = {"tensorflow": m._compile(keras_model, args.size, imagenet=False),
                "xla": m._compile(keras_model, args.size, imagenet=False, jit_compile=True)}
    # bf16: the same weights in a model built under the mixed_bfloat16 policy (oneDNN runs
    # its convolutions in bfloat16 where the CPU has AVX512_BF16/AMX).
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    bf16_model = m.build_cifar_resnet(args.size)
    tf.keras.mixed_precision.set_global_policy("float32")
    bf16_model.set_weights(keras_model.get_weights())
    bf16 = m._compile(bf16_model, args.size, imagenet=False)
    runtimes["bf16"] = lambda batch: np.asarray(bf16(batch), dtype=np.float32)
    runtimes.update(converted(keras_model, args.size, s.tf_intra_op_threads))
    x = images(args.images, args.size)
    ref = np.concatenate([runtimes["tensorflow"](x[i:i + 64]) for i in range(0, len(x), 64)])
    report: dict = {"size": args.size, "images": len(x), "tolerance": args.tolerance, "runtimes": {}}
    for name, predict in runtimes.items():
        out = np.concatenate([predict(x[i:i + 64]) for i in range(0, len(x), 64)])
        report["runtimes"][name] = {
            "max_abs_diff": float(np.max(np.abs(out - ref))),
            "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
            "img_s": {bs: 0.0 for bs in batches}}
        for bs in batches:  # warm-up: trace and compile this shape
            predict(x[:bs])
            predict(x[:bs])
    for _ in range(args.rounds):  # interleaved: a neighbour's burst hits every runtime alike
        for name, predict in runtimes.items():
            for bs in batches:
                r = report["runtimes"][name]["img_s"]
                r[bs] = max(r[bs], speed(predict, x[:bs], args.seconds / args.rounds))
    ref_speed = report["runtimes"]["tensorflow"]["img_s"]
    for name, r in report["runtimes"].items():
        r["speedup"] = {bs: round(v / ref_speed[bs], 3) for bs, v in r["img_s"].items()}
        r["identical"] = r["max_abs_diff"] <= args.tolerance and r["top1_agreement"] == 1.0
        r["adopt"] = name != "tensorflow" and r["identical"] and min(r["speedup"].values()) > 1.05
        print(f"{name:13s} max|diff| {r['max_abs_diff']:.2e}  top-1 agreement {r['top1_agreement']:.3f}  "
              + "  ".join(f"batch {bs}: {v:7.1f} img/s ({r['speedup'][bs]:.2f}x)" for bs, v in r["img_s"].items())
              + ("  ADOPT" if r["adopt"] else ""))
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    print(json.dumps({**report, "load_average": load}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
