"""Train (or fine-tune) ResNet50 on CIFAR-10, or a CIFAR ResNet, and write the weights the service loads.

    python -m inference.train --dataset-source /path/cifar-10-python.tar.gz \\
        --epochs 5 --steps 200 --out results/resnet50-cifar10.weights.h5
    MODEL_WEIGHTS=results/resnet50-cifar10.weights.h5 gunicorn -c inference/gunicorn.conf.py

    python -m inference.train --model cifar10_resnet20 --epochs 5 --out results/cifar10_resnet20.pt
    MODEL_ENGINE=torch MODEL=cifar10_resnet20 MODEL_WEIGHTS=results/cifar10_resnet20.pt make serve

``--model cifar10_resnet20`` ... ``cifar100_resnet56`` trains with PyTorch
(``inference.train_torch``: upstream's recipe, a ``.pt`` checkpoint, ``--init pretrained``
to fine-tune the published weights); the rest of this docstring is ResNet50's.

The network is the service's 10-class ResNet50 at 32x32 (``build_cifar_resnet``),
with the service's preprocessing (``resnet50.preprocess_input``) so that the
weights mean the same thing when served.  ``--init imagenet`` copies the Keras
ImageNet backbone weights first (needs them in the Keras cache or internet);
the default ``random`` trains from scratch.  Keras prints a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from common.log import setup_logging
from common.settings import DatasetSettings, with_flags
from common.settings_service import CIFAR_RESNETS
from inference.cifar import load_cifar10

log = logging.getLogger("inference.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m inference.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset-source",
                   help="cifar-10-python.tar.gz or a cifar-10-batches-py directory (cifar-100's for a "
                        "cifar100_* model) (env DATASET_SOURCE)")
    p.add_argument("--model", default="resnet50", choices=("resnet50", *CIFAR_RESNETS),
                   help="network: resnet50 (TensorFlow) or a CIFAR ResNet (PyTorch, MODEL_ENGINE=torch)")
    p.add_argument("--out", required=True,
                   help="weights file to write: .weights.h5 for resnet50, .pt for a CIFAR ResNet")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: one pass)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate: Adam's for resnet50 (default 1e-3), SGD's initial one for a CIFAR "
                        "ResNet (default 0.1, cosine to 0)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training images (0: all)")
    p.add_argument("--val-limit", type=int, default=1000, help="test images to evaluate on (0: skip)")
    p.add_argument("--init", choices=("random", "imagenet", "pretrained"), default="random",
                   help="initial weights: imagenet (resnet50's backbone), pretrained (a CIFAR ResNet's "
                        "published checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-eagerly", action="store_true",
                   help="skip graph compilation (about a minute for ResNet50 on 2 cores): "
                        "faster for a handful of steps, slower for real training")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras progress output")
    args = p.parse_args(argv)
    args.dataset_source = with_flags(DatasetSettings, p, dataset_source=args.dataset_source).dataset_source
    if not args.dataset_source:
        p.error("--dataset-source is required (or set DATASET_SOURCE)")
    torch_model = args.model != "resnet50"
    if not torch_model and not args.out.endswith(".weights.h5"):
        p.error("--out must end in .weights.h5 (the Keras 3 weights format)")
    if torch_model and not args.out.endswith(".pt"):
        p.error(f"--out must end in .pt for --model {args.model} (a torch checkpoint, the published format)")
    if args.init == ("imagenet" if torch_model else "pretrained"):
        p.error(f"--init {args.init} is not for --model {args.model}: imagenet is resnet50's, pretrained "
                "the CIFAR ResNets'")
    if args.epochs < 1 or args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        p.error("--epochs, --steps and --batch-size must be positive")
    return args


def _dataset(images, labels, batch_size, *, training: bool, seed: int):
    import tensorflow as tf

    def prep(x, y):
        x = tf.cast(x, tf.float32)
        if training:
            x = tf.image.random_flip_left_right(x)
        return tf.keras.applications.resnet50.preprocess_input(x), y

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(min(len(images), 10_000), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def train(args: argparse.Namespace) -> dict:
    import tensorflow as tf

    from inference import model as model_mod

    x_train, y_train = load_cifar10(args.dataset_source, "train")
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    log.info("training images: %d from %s", len(x_train), args.dataset_source)

    tf.keras.utils.set_random_seed(args.seed)
    net = model_mod.build_cifar_resnet(model_mod.IMAGE_SIZE)
    if args.init == "imagenet":
        # Keras fetches the no-top ImageNet file (from its cache, or downloads it).
        backbone = tf.keras.applications.ResNet50(include_top=False, weights="imagenet",
                                                  input_shape=(32, 32, 3))
        for layer in backbone.layers:
            if layer.weights:
                net.get_layer(layer.name).set_weights(layer.get_weights())
        log.info("backbone initialised from ImageNet weights")

    net.compile(optimizer=tf.keras.optimizers.Adam(1e-3 if args.lr is None else args.lr),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                # XLA takes over a minute to compile ResNet50 training on a small CPU.
                jit_compile=False, run_eagerly=args.run_eagerly)
    steps = args.steps or max(1, len(x_train) // args.batch_size)
    started = time.perf_counter()
    history = net.fit(_dataset(x_train, y_train, args.batch_size, training=True, seed=args.seed),
                      epochs=args.epochs, steps_per_epoch=steps, verbose=args.verbose,
                      shuffle=False)  # the tf.data pipeline shuffles
    result = {"train_seconds": time.perf_counter() - started,
              "loss": float(history.history["loss"][-1]),
              "accuracy": float(history.history["accuracy"][-1])}

    if args.val_limit:
        x_test, y_test = load_cifar10(args.dataset_source, "test")
        x_test, y_test = x_test[:args.val_limit], y_test[:args.val_limit]
        loss, acc = net.evaluate(_dataset(x_test, y_test, args.batch_size, training=False, seed=0),
                                 verbose=args.verbose)
        result.update(val_loss=float(loss), val_accuracy=float(acc), val_images=len(x_test))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    net.save_weights(args.out)
    sha8 = model_mod.file_sha256(args.out)[:8]
    result.update(out=args.out, model_id=f"resnet50-cifar10-{sha8}-{model_mod.IMAGE_SIZE}")
    return result


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    if args.model != "resnet50":
        from inference import train_torch

        result = train_torch.train(args)
        log.info("wrote %s: %s", args.out, ", ".join(f"{k}={v}" for k, v in result.items() if k != "out"))
        print(f"serve it with: MODEL_ENGINE=torch MODEL={args.model} MODEL_WEIGHTS={args.out} "
              f"gunicorn -c inference/gunicorn.conf.py 'inference:create_app()'  (model id {result['model_id']})")
        return 0
    result = train(args)
    log.info("wrote %s: %s", args.out, ", ".join(f"{k}={v}" for k, v in result.items() if k != "out"))
    print(f"serve it with: MODEL_WEIGHTS={args.out} gunicorn -c inference/gunicorn.conf.py "
          f"'inference:create_app()'  (model id {result['model_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
