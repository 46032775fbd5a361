"""inference.train: the CIFAR reader, and a few training steps whose weights the service loads."""

from __future__ import annotations

import numpy as np
import pytest

from inference.cifar import load_cifar10


def test_reader_layout(cifar_archive, tmp_path):
    x, y = load_cifar10(str(cifar_archive), "train")
    xt, yt = load_cifar10(str(cifar_archive), "test")
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and len(x) == len(y)
    assert len(x) == 5 * len(xt) and yt.min() >= 0 and yt.max() <= 9
    # Same data from the extracted directory (both layouts are accepted).
    import tarfile

    with tarfile.open(cifar_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    x2, y2 = load_cifar10(str(tmp_path), "train")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_reader_planes_are_rgb_row_major(tmp_path):
    """Row of 3072 = 1024 R, 1024 G, 1024 B, each 32x32 row-major."""
    import pickle

    data = np.zeros((1, 3072), dtype=np.uint8)
    data[0, 0] = 200  # R of pixel (0, 0)
    data[0, 1024 + 33] = 100  # G of pixel (1, 1)
    data[0, 2048 + 31] = 50  # B of pixel (0, 31)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3]}))
    x, y = load_cifar10(str(tmp_path), "test")
    assert x[0, 0, 0, 0] == 200 and x[0, 1, 1, 1] == 100 and x[0, 0, 31, 2] == 50
    assert x.sum() == 350 and y.tolist() == [3]


def test_reader_rejects_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_cifar10(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        load_cifar10(str(tmp_path))  # a directory without the batches
    with pytest.raises(ValueError):
        load_cifar10(str(tmp_path), "validation")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_train_smoke_then_serve(cifar_archive, tmp_path):
    pytest.importorskip("tensorflow")
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
