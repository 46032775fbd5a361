"""inference.train: the CIFAR reader, and a few training steps whose weights the service loads."""

from __future__ import annotations

import numpy as np
import pytest

from inference.cifar import load_cifar10
from tests.binaries import required_module


def test_reader_gives_class_indices(cifar_archive):
    """The producer's loader does the archive parsing (tests/unit/test_dataset.py); this
    view only turns class names into the indices the network trains on."""
    x, y = load_cifar10(str(cifar_archive), "train")
    xt, yt = load_cifar10(str(cifar_archive), "test")
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and len(x) == len(y)
    assert len(x) == 5 * len(xt) and yt.min() >= 0 and yt.max() <= 9
    with pytest.raises(ValueError):
        load_cifar10(str(cifar_archive), "validation")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_train_smoke_then_serve(cifar_archive, tmp_path):
    required_module("tensorflow")
    from inference import train
    from inference.model import file_sha256, load_model

    out = tmp_path / "w.weights.h5"
    args = train.parse_args(["--dataset-source", str(cifar_archive), "--out", str(out),
                             "--epochs", "1", "--steps", "2", "--batch-size", "4", "--limit", "64",
                             "--val-limit", "4", "--run-eagerly", "--verbose", "0"])
    result = train.train(args)
    assert out.is_file() and result["val_images"] == 4
    assert np.isfinite(result["loss"])

    served = load_model(str(out))
    assert served.id == f"resnet50-cifar10-{file_sha256(str(out))[:8]}-32" == result["model_id"]
    assert served.weights_sha256 == file_sha256(str(out))  # shown by /v1/model
    assert "cifar10" in served.id and "untrained" not in served.id and not served.untrained
    x, _ = load_cifar10(str(cifar_archive), "test")
    probs = served.predict(x[:4])
    assert probs.shape == (4, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_train_cli_validates_arguments():
    from inference import train

    with pytest.raises(SystemExit):
        train.parse_args(["--dataset-source", "x", "--out", "w.h5"])  # wrong suffix
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset-source", "x", "--out", "w.weights.h5", "--steps", "0"])
