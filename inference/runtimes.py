"""Optional model runtimes (``MODEL_ENGINE``): the same Keras model run by ONNX Runtime or OpenVINO.

TensorFlow stays the reference engine (``tensorflow``, the default).  The others are
converted at load time from the *same* Keras model (same weights) as the TensorFlow
serving function: the converted graph is :func:`serving_graph` - float32 pixels (the
uint8 images cast, and resized by TensorFlow first when not at the input size, as the
TensorFlow serving function did), ``resnet50.preprocess_input`` (RGB->BGR, ImageNet mean
subtracted), the model, and for ImageNet weights the fold to the 10 CIFAR classes - so
the preprocessing is the service's, inside the converted graph.

* ``onnxruntime``: tf2onnx converts the graph (opset 17), ONNX Runtime's CPU provider
  runs it (``pip install -r requirements/runtime-onnxruntime.txt``); model id ``...-ort``.
  Measured only, not recommended: the conversion peaks at ~7-9 GiB of RSS (tf2onnx 1.17,
  ResNet50; ``keras.Model.export(format="onnx")`` uses it too) and the worker keeps several
  GiB of it, against ~1 GiB with OpenVINO, which is also faster.
* ``openvino``: ``openvino.convert_model`` of the graph, the CPU plugin runs it with
  ``INFERENCE_PRECISION_HINT=f32`` (its default on AVX512_BF16/AMX CPUs is bfloat16,
  whose probabilities differ by ~1e-2) (``requirements/runtime-openvino.txt``); ``...-ov``.

Threads: both use the number TensorFlow would (``TF_INTRA_OP_THREADS``, else the CPUs
this process may run on), one inter-op thread.  bench/runtime_compare.py measures
them against TensorFlow; docs/PERFORMANCE.md has the figures and the verdicts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

ENGINES = ("tensorflow", "onnxruntime", "openvino")
SUFFIX = {"tensorflow": "", "onnxruntime": "-ort", "openvino": "-ov"}
PACKAGE = {"onnxruntime": ("onnxruntime", "tf2onnx"), "openvino": ("openvino",)}
ONNX_OPSET = 17


class EngineUnavailable(RuntimeError):
    """The engine's package is not installed (``requirements/runtime-<name>.txt``)."""


def available(engine: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(p) is not None for p in PACKAGE.get(engine, ()))


def default_threads(intra: int = 0) -> int:
    if intra:
        return intra
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def serving_graph(model: tf.keras.Model, input_size: int, fold: np.ndarray | None = None) -> Callable:
    """float32 pixels N x S x S x 3 (0..255) -> float32 probabilities, the graph the other
    engines convert (float input so that a resize before it needs no rounding)."""
    # The fold is made a constant inside the trace: one captured from outside would become
    # an input of the converted graph (tf2onnx).
    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="pixels")])
    def serve(pixels):
        x = tf.keras.applications.resnet50.preprocess_input(pixels)
        probs = tf.cast(model(x, training=False), tf.float32)
        if fold is not None:
            probs = tf.matmul(probs, tf.constant(fold, tf.float32))
            probs = probs / tf.maximum(tf.reduce_sum(probs, axis=1, keepdims=True), 1e-12)
        return probs

    return serve


def _sized(predict: Callable[[np.ndarray], np.ndarray], input_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images -> float32 pixels; images at another size are resized as the TensorFlow
    serving function does (bilinear, on the float32 pixels, before preprocessing)."""

    def run(images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.uint8).astype(np.float32)
        if x.shape[1:3] != (input_size, input_size):
            x = tf.image.resize(x, (input_size, input_size), method="bilinear").numpy()
        return predict(np.ascontiguousarray(x))

    return run


def onnxruntime_predict(model: tf.keras.Model, input_size: int, fold: np.ndarray | None = None,
                        threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime as ort
        import tf2onnx
    except ImportError as exc:
        raise EngineUnavailable(f"onnxruntime engine: {exc} (pip install -r requirements/runtime-onnxruntime.txt)") from None
    log.warning("MODEL_ENGINE=onnxruntime: converting with tf2onnx (peaks at ~7-9 GiB of memory "
                "for ResNet50; docs/PERFORMANCE.md)")
    serve = serving_graph(model, input_size, fold)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET)
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: images})[0]

    return _sized(predict, input_size)


def openvino_predict(model: tf.keras.Model, input_size: int, fold: np.ndarray | None = None,
                     threads: int = 0, precision: str = "f32") -> Callable[[np.ndarray], np.ndarray]:
    try:
        import openvino as ov
    except ImportError as exc:
        raise EngineUnavailable(f"openvino engine: {exc} (pip install -r requirements/runtime-openvino.txt)") from None
    compiled = ov.compile_model(ov.convert_model(serving_graph(model, input_size, fold)), "CPU",
                                {"INFERENCE_NUM_THREADS": default_threads(threads),
                                 "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: one batch at a time

    def predict(images: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(request.infer([images])[0], dtype=np.float32, copy=True)

    return _sized(predict, input_size)


def engine_predict(engine: str, model: tf.keras.Model, input_size: int, fold: np.ndarray | None = None,
                   threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    if engine == "onnxruntime":
        return onnxruntime_predict(model, input_size, fold, threads)
    if engine == "openvino":
        return openvino_predict(model, input_size, fold, threads)
    raise ValueError(f"MODEL_ENGINE must be one of {', '.join(ENGINES)}, not {engine!r}")


def with_engine(loaded, engine: str, threads: int | None = None):
    """``loaded`` (an inference.model.LoadedModel from its TensorFlow serving function) with
    its predict run by ``engine`` from the same Keras model; the id gains the engine's suffix.
    ``threads``: default TensorFlow's intra-op setting (TF_INTRA_OP_THREADS), else the CPUs."""
    if engine == "tensorflow":
        return loaded
    from inference.imagenet_cifar import mapping_matrix

    model = loaded.predict.keras_model
    fold = np.asarray(mapping_matrix(), dtype=np.float32) if loaded.predict.imagenet else None
    if threads is None:
        threads = tf.config.threading.get_intra_op_parallelism_threads()
    predict = engine_predict(engine, model, loaded.input_size, fold, threads)
    return dataclasses.replace(loaded, id=loaded.id + SUFFIX[engine], predict=predict)
