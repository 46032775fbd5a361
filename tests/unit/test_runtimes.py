"""MODEL_ENGINE: the optional runtimes (inference/runtimes.py) serve the TensorFlow model's labels.

The engines' packages are optional (requirements/runtime-<engine>.txt): without them the
comparison tests skip, and the engine fails at load with a message naming the file.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.settings import ServiceSettings
from tests.binaries import required_module


def test_model_engine_setting(monkeypatch):
    assert ServiceSettings().model_engine == "tensorflow"
    monkeypatch.setenv("MODEL_ENGINE", "openvino")
    assert ServiceSettings().model_engine == "openvino"
    monkeypatch.setenv("MODEL_ENGINE", "tensorrt")
    with pytest.raises(ValueError):
        ServiceSettings()


def test_load_model_rejects_an_unknown_engine_or_bfloat16():
    required_module("tensorflow")
    from inference import model as model_mod

    with pytest.raises(ValueError, match="engine"):
        model_mod.load_model("random", 32, engine="tensorrt")
    with pytest.raises(ValueError, match="engine"):
        model_mod.load_model("random", 32, precision="bfloat16", engine="openvino")


@pytest.mark.parametrize("engine, packages", [("onnxruntime", ("onnxruntime", "tf2onnx")),
                                              ("openvino", ("openvino",))])
def test_engine_serves_the_tensorflow_labels(engine, packages, cifar_archive):
    """The same random weights, converted: the same top-1 labels on CIFAR images and the
    probabilities within 1e-4 of TensorFlow's (float32 both; measured ~3e-6)."""
    required_module("tensorflow")
    for package in packages:
        pytest.importorskip(package, reason=f"optional, not in make venv: requirements/runtime-{engine}.txt")
    from common.dataset import load
    from inference import model as model_mod

    reference = model_mod.load_model("random", 32)
    served = model_mod.load_model("random", 32, engine=engine)
    assert served.id == reference.id + {"onnxruntime": "-ort", "openvino": "-ov"}[engine]
    assert served.input_size == reference.input_size and served.untrained
    x = np.asarray(load("cifar10", str(cifar_archive), limit=16).images[:16], dtype=np.uint8)
    p_tf, p_rt = reference.predict(x), served.predict(x)
    assert p_rt.dtype == np.float32 and p_rt.shape == p_tf.shape == (len(x), 10)
    assert (p_rt.argmax(axis=1) == p_tf.argmax(axis=1)).all()
    assert np.max(np.abs(p_rt - p_tf)) < 1e-4
    assert np.allclose(served.predict(x[:1]), p_rt[:1], atol=1e-6)  # batch 1 too


@pytest.mark.parametrize("engine, packages", [("onnxruntime", ("onnxruntime", "tf2onnx")),
                                              ("openvino", ("openvino",))])
def test_engine_folds_imagenet_classes_like_tensorflow(engine, packages):
    """ImageNet weights: the fold to the 10 CIFAR classes is in the converted graph (a small
    1000-class stand-in model for ResNet50)."""
    tf = required_module("tensorflow")
    for package in packages:
        pytest.importorskip(package, reason=f"optional, not in make venv: requirements/runtime-{engine}.txt")
    from inference import model as model_mod
    from inference import runtimes

    tf.keras.utils.set_random_seed(0)
    keras_model = tf.keras.Sequential([tf.keras.Input((32, 32, 3)), tf.keras.layers.Conv2D(8, 3, strides=2),
                                       tf.keras.layers.GlobalAveragePooling2D(),
                                       tf.keras.layers.Dense(1000, activation="softmax")])
    reference = model_mod.LoadedModel("stand-in-32", "test", 32, True,
                                      model_mod._compile(keras_model, 32, imagenet=True))
    served = runtimes.with_engine(reference, engine)
    x = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    p_tf, p_rt = reference.predict(x), served.predict(x)
    assert p_rt.shape == p_tf.shape == (4, 10)
    assert np.max(np.abs(p_rt - p_tf)) < 1e-5
