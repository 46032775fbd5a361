"""MODEL_ENGINE=torch: the CIFAR ResNets (inference/cifar_resnet.py) and their weights
(inference/torch_engine.py): published-format checkpoints load whole or not at all, and a
download is verified against the sha256 prefix of its file name before it is cached."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from tests.binaries import required_module
from tests.checkpoints import random_state_dict, write_checkpoint

torch = required_module("torch")

from inference import cifar_resnet, torch_engine  # noqa: E402
from inference.weights import WeightsUnavailable, file_sha256  # noqa: E402

# Upstream's README (chenyaofo/pytorch-cifar-models, "Model Zoo"): #Params.(M), two decimals.
UPSTREAM_PARAMS_M = {"cifar10_resnet20": 0.27, "cifar10_resnet32": 0.47, "cifar10_resnet44": 0.66,
                     "cifar10_resnet56": 0.86, "cifar100_resnet20": 0.28, "cifar100_resnet32": 0.47,
                     "cifar100_resnet44": 0.67, "cifar100_resnet56": 0.86}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty weights cache (KERAS_HOME/models, alone: not the user's ~/.keras) and a mirror
    directory, served as file://."""
    from inference import weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert weights.cache_dirs()[0] == str(tmp_path / "keras" / "models")  # Keras' convention
    monkeypatch.setattr(weights, "cache_dirs", lambda: [str(tmp_path / "keras" / "models")])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    return tmp_path / "keras" / "models", mirror


def publish(monkeypatch, mirror, seed=0, model="cifar10_resnet20"):
    """A checkpoint written in the published format into ``mirror``, made the published file
    of ``model`` (its real name carries the real file's hash, which this one cannot have)."""
    path = write_checkpoint(mirror, model, seed)
    monkeypatch.setitem(cifar_resnet.CHECKPOINTS, model, path.name)
    return path


def images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# ------------------------------------------------------------ the network

@pytest.mark.parametrize("name", cifar_resnet.MODELS)
def test_the_networks_have_upstreams_names_and_shapes(name):
    net = cifar_resnet.build(name)
    state = net.state_dict()
    classes = 100 if name.startswith("cifar100") else 10
    blocks = cifar_resnet.spec(name).blocks
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == UPSTREAM_PARAMS_M[name]
    # 6 stem tensors (a conv, a batch norm's 5), 12 per block (2 convs, 2 batch norms), 6 per
    # downsample (layer2 and layer3), 2 of fc
    assert len(state) == 6 + 3 * blocks * 12 + 2 * 6 + 2
    assert state["conv1.weight"].shape == (16, 3, 3, 3) and state["fc.weight"].shape == (classes, 64)
    assert state["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert state["layer3.0.downsample.1.running_var"].shape == (64,)
    assert f"layer3.{blocks - 1}.bn2.num_batches_tracked" in state
    assert "layer1.0.downsample.0.weight" not in state  # same width, stride 1: identity shortcut
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


def test_the_model_names_are_the_settings():
    from common.settings_service import CIFAR_RESNET_RELEASE_URL, CIFAR_RESNETS

    assert cifar_resnet.MODELS == CIFAR_RESNETS
    assert CIFAR_RESNET_RELEASE_URL == "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/"
    assert all(cifar_resnet.spec(m).sha256_prefix and len(cifar_resnet.spec(m).sha256_prefix) == 8
               for m in cifar_resnet.MODELS)
    with pytest.raises(ValueError, match="MODEL='resnet50'"):
        cifar_resnet.spec("resnet50")


@pytest.mark.parametrize("name, prefix", [("cifar10_resnet20-4118986f.pt", "4118986f"),
                                          ("/w/cifar100_resnet56-f2eff4c8.pth", "f2eff4c8"),
                                          ("mine-20240101.pt", "20240101"), ("mine.pt", None),
                                          ("mine-v2.pt", None), ("resnet-ABCDEF12.pt", None)])
def test_the_sha256_prefix_of_a_file_name(name, prefix):
    assert cifar_resnet.sha256_prefix_of(name) == prefix


def test_preprocessing_is_upstreams():
    """pixels / 255, then (x - mean) / std with upstream's CIFAR-10 statistics, softmax."""
    served = torch_engine.load_model("cifar10_resnet20", "random")
    net = served.predict.torch_model
    x = images(5)
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010])
    ref = torch.from_numpy(((x / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        expected = torch.softmax(net(ref), dim=1).numpy()
    probs = served.predict(x)
    assert probs.dtype == np.float32 and probs.shape == (5, 10)
    assert np.allclose(probs, expected, atol=1e-5) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(served.predict(x[:1]), probs[:1], atol=1e-5)  # batch 1 too
    with pytest.raises(ValueError, match="N x 32 x 32 x 3"):
        served.predict(np.zeros((1, 48, 48, 3), np.uint8))


def test_random_weights_say_untrained():
    a, b = (torch_engine.load_model("cifar10_resnet20", "random") for _ in range(2))
    assert a.id == "cifar10_resnet20-untrained-32" and a.untrained and a.input_size == 32
    assert a.weights_sha256 is None and a.weights_source == "random:seed=0"
    assert np.array_equal(a.predict(images()), b.predict(images()))  # a fixed seed
    with pytest.raises(ValueError, match="32x32"):
        torch_engine.load_model("cifar10_resnet20", "random", input_size=64)


def test_cifar100_models_answer_the_fine_labels(tmp_path):
    from common.labels import CIFAR100_CLASSES

    path = write_checkpoint(tmp_path, "cifar100_resnet32")
    served = torch_engine.load_model("cifar100_resnet32", str(path))
    assert served.classes == CIFAR100_CLASSES and served.predict(images(3)).shape == (3, 100)
    assert served.id == f"cifar100_resnet32-{file_sha256(str(path))[:8]}-32" and not served.untrained


def test_threads_follow_the_tensorflow_settings(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch_engine.configure_threads(1, 0)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2})
        torch_engine.configure_threads(0, 0)  # 0: the CPUs this process may run on
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------ published weights

def test_a_published_checkpoint_is_downloaded_verified_cached_and_served(cache, monkeypatch):
    cache_dir, mirror = cache
    published = publish(monkeypatch, mirror)
    served = torch_engine.load_model("cifar10_resnet20", "pretrained", base_url=mirror.as_uri() + "/",
                                     progress=False)
    cached = cache_dir / published.name
    assert cached.read_bytes() == published.read_bytes() and not list(cache_dir.glob("*.part"))
    assert served.id == "cifar10_resnet20-pretrained-32" and not served.untrained
    assert served.weights_source == f"pretrained:{cached}"
    assert served.weights_sha256 == file_sha256(str(published))
    # The checkpoint's weights are what is served: its state_dict, key for key.
    state = torch.load(published, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in served.predict.torch_model.state_dict().items())
    # Cached: served again with the mirror gone (no network needed).
    shutil.rmtree(mirror)
    again = torch_engine.load_model("cifar10_resnet20", "auto", base_url="http://127.0.0.1:9/", progress=False)
    assert again.id == served.id and np.array_equal(again.predict(images()), served.predict(images()))


def test_a_download_that_does_not_match_its_name_is_refused(cache, monkeypatch):
    cache_dir, mirror = cache
    published = publish(monkeypatch, mirror)
    data = bytearray(published.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the weights changed, the same name
    published.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailable, match="sha256 mismatch"):
        torch_engine.load_model("cifar10_resnet20", "pretrained", base_url=mirror.as_uri(), progress=False)
    assert not cache_dir.exists() or not list(cache_dir.iterdir())  # nothing cached, no partial file


def test_a_damaged_cached_copy_is_downloaded_again(cache, monkeypatch, caplog):
    cache_dir, mirror = cache
    published = publish(monkeypatch, mirror)
    cache_dir.mkdir(parents=True)
    (cache_dir / published.name).write_bytes(b"torn download")
    with caplog.at_level(logging.WARNING):
        served = torch_engine.load_model("cifar10_resnet20", "pretrained", base_url=mirror.as_uri(),
                                         progress=False)
    assert served.id == "cifar10_resnet20-pretrained-32"
    assert (cache_dir / published.name).read_bytes() == published.read_bytes()
    assert any("damaged" in r.message for r in caplog.records)


def test_without_the_weights_pretrained_fails_and_auto_serves_untrained(cache, monkeypatch, caplog):
    cache_dir, _mirror = cache
    cache_dir.mkdir(parents=True)
    (cache_dir / cifar_resnet.CHECKPOINTS["cifar10_resnet20"]).write_bytes(b"not the published file")
    for base in ("http://127.0.0.1:9/", "https://weights.invalid/"):  # refused port, unresolvable host
        with pytest.raises(WeightsUnavailable, match="cannot"):
            torch_engine.load_model("cifar10_resnet20", "pretrained", base_url=base, download_timeout_s=2.0)
    with caplog.at_level(logging.WARNING, logger="inference.weights"):
        served = torch_engine.load_model("cifar10_resnet20", "auto", base_url="http://127.0.0.1:9/",
                                         download_timeout_s=2.0)
    assert served.id == "cifar10_resnet20-untrained-32" and served.untrained
    assert any("RANDOM" in r.message and r.levelno == logging.WARNING for r in caplog.records)


# ------------------------------------------------------------ checkpoints: whole or nothing

def _drop(key):
    return lambda state: state.pop(key)


def _add(key):
    return lambda state: state.__setitem__(key, torch.zeros(3))


def _reshape(key, shape):
    return lambda state: state.__setitem__(key, torch.zeros(shape))


@pytest.mark.parametrize("edit, fragment", [
    (_drop("layer2.0.downsample.1.running_mean"), "missing: layer2.0.downsample.1.running_mean"),
    (_drop("fc.bias"), "missing: fc.bias"),
    (_add("layer4.0.conv1.weight"), "extra: layer4.0.conv1.weight"),
    (_reshape("fc.weight", (100, 64)), "misshaped: fc.weight (100, 64) (the network's: (10, 64))"),
    (_reshape("layer1.1.conv2.weight", (16, 16, 1, 1)), "misshaped: layer1.1.conv2.weight"),
])
def test_a_checkpoint_that_is_not_the_network_is_refused_whole(tmp_path, edit, fragment):
    path = write_checkpoint(tmp_path, edit=edit)
    with pytest.raises(torch_engine.CheckpointMismatch, match="not a CifarResNet") as caught:
        torch_engine.load_model("cifar10_resnet20", str(path))
    assert fragment in str(caught.value)
    # Nothing was copied into the network before the refusal.
    net = cifar_resnet.build("cifar10_resnet20")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(torch_engine.CheckpointMismatch):
        torch_engine.load_checkpoint(net, str(path))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_a_checkpoint_of_another_model_or_format_is_refused(tmp_path):
    resnet32 = write_checkpoint(tmp_path, "cifar10_resnet32")
    with pytest.raises(torch_engine.CheckpointMismatch, match="extra: layer1.3"):
        torch_engine.load_model("cifar10_resnet20", str(resnet32))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": random_state_dict(), "epoch": 3}, wrapped)
    with pytest.raises(torch_engine.CheckpointMismatch, match="not a state_dict"):
        torch_engine.load_model("cifar10_resnet20", str(wrapped))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(torch_engine.CheckpointMismatch, match="not a checkpoint torch can read"):
        torch_engine.load_model("cifar10_resnet20", str(garbage))


def test_a_local_file_is_served_and_checked_against_the_hash_in_its_name(tmp_path):
    path = write_checkpoint(tmp_path)
    served = torch_engine.load_model("cifar10_resnet20", str(path))
    sha = file_sha256(str(path))
    assert served.id == f"cifar10_resnet20-{sha[:8]}-32" and served.weights_sha256 == sha
    assert served.weights_source == f"file:{path}"
    renamed = tmp_path / "cifar10_resnet20-4118986f.pt"  # the published name, not this file's hash
    shutil.copy(path, renamed)
    with pytest.raises(WeightsUnavailable, match="sha256 mismatch"):
        torch_engine.load_model("cifar10_resnet20", str(renamed))
    plain = tmp_path / "my-model.pt"  # no hash in the name: served as it is
    shutil.copy(path, plain)
    assert torch_engine.load_model("cifar10_resnet20", str(plain)).weights_sha256 == sha
    with pytest.raises(WeightsUnavailable, match="no such file"):
        torch_engine.load_model("cifar10_resnet20", str(tmp_path / "absent.pt"))
