"""ResNet50 loading and the compiled predict function.

Importing this module imports TensorFlow, so only the worker's loader thread
(``inference.serving``) and ``inference.train`` import it - never the Gunicorn
master, never ``inference/__init__``.

``MODEL_WEIGHTS``:

* ``imagenet``: Keras ImageNet weights (include_top, 1000 classes), input resized
  to 224 by default; the 1000 probabilities are folded into the 10 CIFAR classes
  with the table in :mod:`inference.imagenet_cifar`.  The weights come from the
  Keras cache; if absent they are downloaded with a short socket timeout
  (``WEIGHTS_DOWNLOAD_TIMEOUT_S``) so that a host without internet fails fast.
* a path to a ``.weights.h5`` file written by ``inference.train`` (10 classes).
* ``random``: ``weights=None`` with a fixed seed - an *untrained* network whose
  labels mean nothing; its id says ``untrained``.
* ``auto`` (default): ``imagenet`` if the weights can be had, else ``random``
  with a WARNING.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.download import DownloadError, fetch
from common.wire import IMAGE_SIZE
from inference.imagenet_cifar import mapping_matrix
from inference.weights import (LoadedModel, WeightsUnavailable, cache_dirs, cached, download_dir, file_sha256,
                               found_or_none)
from inference.weights import resolve_or_fail as _resolve_or_fail

__all__ = ["IMAGE_SIZE", "LoadedModel", "WeightsUnavailable", "build_cifar_resnet", "configure_threads",
           "file_sha256", "find_imagenet_weights", "load_model"]

log = logging.getLogger(__name__)

RANDOM_SEED = 0
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_FILE
IMAGENET_MD5 = "2cb95161c43110f7111970584f804107"  # keras.applications.resnet WEIGHTS_HASHES


def configure_threads(intra: int, inter: int) -> None:
    """Must run before TensorFlow executes anything (0 keeps TF's default)."""
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as exc:  # runtime already initialised (tests, second app)
        log.warning("TF thread settings not applied: %s", exc)


def build_cifar_resnet(input_size: int = IMAGE_SIZE) -> tf.keras.Model:
    """The 10-class ResNet50 that inference.train trains and the service loads."""
    return tf.keras.applications.ResNet50(
        weights=None, include_top=True, input_shape=(input_size, input_size, 3), classes=10)


def _keras_cache_dirs() -> list[str]:
    return cache_dirs()  # a module global, so that tests can point it elsewhere


def find_imagenet_weights(download_timeout_s: float = 3.0, download: bool = True) -> str:
    """Path of the ImageNet weights: from the Keras cache, else downloaded into it.

    Raises WeightsUnavailable quickly when there is no network: every socket
    operation of the download is bounded by ``download_timeout_s``.
    """
    path = cached(IMAGENET_FILE, _keras_cache_dirs())
    if path is not None:
        return path
    if not download:
        raise WeightsUnavailable("ImageNet weights not in the Keras cache")
    target = os.path.join(download_dir(_keras_cache_dirs()), IMAGENET_FILE)
    _resolve_or_fail(IMAGENET_URL, download_timeout_s)
    try:
        fetch(IMAGENET_URL, Path(target), md5=IMAGENET_MD5, timeout_s=download_timeout_s, progress=False)
    except DownloadError as exc:
        raise WeightsUnavailable(f"cannot download ImageNet weights: {exc}") from None
    return target


def _compile(model: tf.keras.Model, input_size: int, imagenet: bool, jit_compile: bool = False):
    """The serving function: uint8 images of the model's input size (N x input_size x
    input_size x 3) in, class probabilities out; no resize in the graph (the service resizes
    while decoding, inference.api.decode_image).  ``jit_compile``: XLA
    (bench/runtime_compare.py measures it against the default; not adopted)."""
    fold = tf.constant(mapping_matrix()) if imagenet else None

    # One trace: the batch dimension is dynamic, so batches of any size reuse it.
    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.uint8)],
                 jit_compile=jit_compile)
    def serve(images):
        x = tf.cast(images, tf.float32)
        x = tf.keras.applications.resnet50.preprocess_input(x)
        probs = tf.cast(model(x, training=False), tf.float32)  # bfloat16 models too
        if fold is not None:
            probs = tf.matmul(probs, fold)  # sum the ImageNet classes of each CIFAR class
            probs = probs / tf.maximum(tf.reduce_sum(probs, axis=1, keepdims=True), 1e-12)
        return probs

    def predict(images: np.ndarray) -> np.ndarray:
        # Checked here, not left to the input signature: TensorFlow (2.x) takes the
        # tf.function's lock before it checks the arguments and never releases it when they
        # do not match, so one wrong-size call would hang every later model call.
        shape = np.shape(images)
        if len(shape) != 4 or tuple(shape[1:]) != (input_size, input_size, 3):
            raise ValueError(f"images must be N x {input_size} x {input_size} x 3 (the model's input size), "
                             f"not {' x '.join(map(str, shape))}")
        return serve(tf.convert_to_tensor(images, dtype=tf.uint8)).numpy()

    predict.keras_model, predict.imagenet = model, imagenet  # for inference.runtimes
    return predict


def load_model(weights: str = "auto", input_size: int | None = None, *,
               download_timeout_s: float = 3.0, precision: str = "float32",
               engine: str = "tensorflow") -> LoadedModel:
    """Build ResNet50 for ``weights`` (auto | imagenet | random | path); see module docstring.
    ``precision`` bfloat16 builds it under Keras' mixed_bfloat16 policy (variables stay
    float32, so the same weight files load); its model id ends in ``-bf16``.  ``engine``
    (MODEL_ENGINE) onnxruntime | openvino: the same model converted and run by that runtime
    (inference.runtimes; float32 only); its id ends in ``-ort`` / ``-ov``."""
    if engine != "tensorflow":
        from inference import runtimes

        if engine not in runtimes.ENGINES or precision != "float32":
            raise ValueError(f"engine must be one of {runtimes.ENGINES} (with precision float32), "
                             f"not {engine!r} with {precision!r}")
        return runtimes.with_engine(load_model(weights, input_size, download_timeout_s=download_timeout_s), engine)
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, not {precision!r}")
    if precision == "bfloat16":
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            loaded = load_model(weights, input_size, download_timeout_s=download_timeout_s)
        finally:
            tf.keras.mixed_precision.set_global_policy("float32")
        return dataclasses.replace(loaded, id=loaded.id + "-bf16")
    choice = weights.strip()
    imagenet_path = None
    if choice.lower() in ("auto", "imagenet"):
        imagenet_path = found_or_none(choice, "imagenet", lambda: find_imagenet_weights(download_timeout_s))
        choice = "random" if imagenet_path is None else "imagenet"

    if choice == "imagenet":
        size = input_size or 224
        model = tf.keras.applications.ResNet50(
            weights=None, include_top=True, input_shape=(size, size, 3), classes=1000)
        model.load_weights(imagenet_path)
        return LoadedModel(f"resnet50-imagenet-{size}", f"imagenet:{imagenet_path}", size, False,
                           _compile(model, size, imagenet=True))
    if choice.lower() == "random":
        size = input_size or IMAGE_SIZE
        tf.keras.utils.set_random_seed(RANDOM_SEED)
        model = build_cifar_resnet(size)
        return LoadedModel(f"resnet50-untrained-{size}", f"random:seed={RANDOM_SEED}", size, True,
                           _compile(model, size, imagenet=False))
    # A weights file written by inference.train.
    if not os.path.isfile(choice):
        raise WeightsUnavailable(f"MODEL_WEIGHTS={choice!r}: no such file (and not auto|imagenet|random)")
    size = input_size or IMAGE_SIZE
    model = build_cifar_resnet(size)
    model.load_weights(choice)
    sha = file_sha256(choice)
    return LoadedModel(f"resnet50-cifar10-{sha[:8]}-{size}", f"file:{os.path.abspath(choice)}", size, False,
                       _compile(model, size, imagenet=False), weights_sha256=sha)
