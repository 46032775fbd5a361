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


def test_train_a_cifar_resnet_then_serve_it(cifar_archive, tmp_path):
    """--model cifar10_resnet20: a few PyTorch steps, a checkpoint in the published format
    that the torch engine serves under the id train reports."""
    torch = required_module("torch")
    from inference import train, train_torch
    from inference.torch_engine import load_model
    from inference.weights import file_sha256

    out = tmp_path / "r20.pt"
    args = train.parse_args(["--model", "cifar10_resnet20", "--dataset-source", str(cifar_archive), "--out",
                             str(out), "--epochs", "2", "--steps", "2", "--batch-size", "8", "--limit", "64",
                             "--val-limit", "16", "--verbose", "0"])
    result = train_torch.train(args)
    assert out.is_file() and not (tmp_path / "r20.pt.part").exists()
    assert len(result["epoch_seconds"]) == 2 and result["val_images"] == 16 and np.isfinite(result["loss"])
    served = load_model("cifar10_resnet20", str(out))
    assert served.id == f"cifar10_resnet20-{file_sha256(str(out))[:8]}-32" == result["model_id"]
    state = torch.load(out, weights_only=True)
    assert set(state) == set(served.predict.torch_model.state_dict())  # the network's own tensors
    x, _ = load_cifar10(str(cifar_archive), "test")
    assert served.predict(x[:4]).shape == (4, 10)


def test_the_training_augmentation_is_upstreams():
    from inference.train_torch import augment

    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)  # no black pixel
    out = augment(x, rng)
    assert out.shape == x.shape and out.dtype == np.uint8
    for original, crop in zip(x, out):  # each is a shifted (zero-filled) view, maybe mirrored
        found = any(np.array_equal(np.pad(o, ((4, 4), (4, 4), (0, 0)))[dy:dy + 32, dx:dx + 32], crop)
                    for o in (original, original[:, ::-1]) for dy in range(9) for dx in range(9))
        assert found
    assert (out == 0).any() and not np.array_equal(out, x)  # some padding shows, some crops move


@pytest.mark.parametrize("argv", [
    ["--model", "cifar10_resnet20", "--out", "w.weights.h5"],  # a torch checkpoint is .pt
    ["--out", "w.pt"],  # resnet50's is .weights.h5
    ["--model", "cifar10_resnet20", "--out", "w.pt", "--init", "imagenet"],
    ["--out", "w.weights.h5", "--init", "pretrained"],
    ["--model", "resnet18", "--out", "w.pt"],
])
def test_train_cli_refuses_what_the_model_cannot_take(argv):
    from inference import train

    with pytest.raises(SystemExit):
        train.parse_args(["--dataset-source", "x", *argv])


def test_fine_tuning_starts_from_the_published_checkpoint(cifar_archive, tmp_path, monkeypatch):
    """--init pretrained: the torch engine's download (TORCH_WEIGHTS_URL, a file:// mirror
    here), checks and cache, then training from those weights (lr 0: they stay)."""
    torch = required_module("torch")
    from inference import cifar_resnet, train, train_torch, weights
    from tests.checkpoints import write_checkpoint

    published = write_checkpoint(tmp_path / "mirror", seed=5)
    monkeypatch.setitem(cifar_resnet.CHECKPOINTS, "cifar10_resnet20", published.name)
    monkeypatch.setattr(weights, "cache_dirs", lambda: [str(tmp_path / "cache")])
    monkeypatch.setenv("TORCH_WEIGHTS_URL", (tmp_path / "mirror").as_uri())
    out = tmp_path / "tuned.pt"
    args = train.parse_args(["--model", "cifar10_resnet20", "--init", "pretrained", "--lr", "0",
                             "--dataset-source", str(cifar_archive), "--out", str(out), "--steps", "1",
                             "--batch-size", "4", "--limit", "16", "--val-limit", "0", "--verbose", "0"])
    train_torch.train(args)
    start, tuned = torch.load(published, weights_only=True), torch.load(out, weights_only=True)
    assert (tmp_path / "cache" / published.name).is_file()
    assert all(torch.equal(start[k], tuned[k]) for k in start if k.endswith("conv1.weight") or k.startswith("fc."))
