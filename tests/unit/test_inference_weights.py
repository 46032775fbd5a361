"""MODEL_WEIGHTS resolution: auto falls back to random fast when ImageNet weights cannot be had."""

from __future__ import annotations

import logging
import threading
import urllib.request

import pytest

from tests.binaries import required_module

required_module("tensorflow")

from inference import model as model_mod  # noqa: E402
from inference import weights  # noqa: E402


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(model_mod, "_keras_cache_dirs", lambda: [str(tmp_path / "models")])
    return tmp_path / "models"


def test_cached_weights_are_found_without_network(empty_cache, monkeypatch):
    empty_cache.mkdir()
    (empty_cache / model_mod.IMAGENET_FILE).write_bytes(b"x")
    monkeypatch.setattr(model_mod, "IMAGENET_URL", "http://unused.invalid/")
    assert model_mod.find_imagenet_weights(download=False).endswith(model_mod.IMAGENET_FILE)


def test_failed_download_fails_with_the_timeout_given(empty_cache, monkeypatch):
    # Unresolvable host (RFC 6761 .invalid) and a refused port: both fail with a clear error,
    # and the download is made with the timeout asked for (no unbounded socket wait).
    timeouts = []
    real_urlopen = urllib.request.urlopen

    def urlopen(url, *a, timeout=None, **k):
        timeouts.append(timeout)
        return real_urlopen(url, *a, timeout=timeout, **k)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    for url in ("https://weights.invalid/resnet50.h5", "http://127.0.0.1:9/resnet50.h5"):
        monkeypatch.setattr(model_mod, "IMAGENET_URL", url)
        with pytest.raises(model_mod.WeightsUnavailable):
            model_mod.find_imagenet_weights(download_timeout_s=2.0)
    assert timeouts and all(t == 2.0 for t in timeouts)
    assert not list(empty_cache.iterdir())  # no partial file left in the cache


def test_slow_dns_is_bounded(monkeypatch):
    # The lookup blocks until released; only a bounded wait reports "within" (an unbounded
    # one would wait for the release and then report the lookup's own error).
    release = threading.Event()

    def getaddrinfo(*_a, **_k):
        release.wait(60)  # hang guard for a broken bound
        raise OSError("released")

    monkeypatch.setattr(weights.socket, "getaddrinfo", getaddrinfo)
    try:
        with pytest.raises(model_mod.WeightsUnavailable, match="within"):
            model_mod._resolve_or_fail("https://slow.example/x", 0.3)
    finally:
        release.set()


def test_auto_falls_back_to_untrained_with_warning(empty_cache, monkeypatch, caplog):
    monkeypatch.setattr(model_mod, "IMAGENET_URL", "http://127.0.0.1:9/resnet50.h5")
    with caplog.at_level(logging.WARNING, logger="inference.weights"):
        loaded = model_mod.load_model("auto", download_timeout_s=1.0)
    assert loaded.id == "resnet50-untrained-32" and loaded.untrained and loaded.input_size == 32
    assert any("RANDOM" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    with pytest.raises(model_mod.WeightsUnavailable):
        model_mod.load_model("imagenet", download_timeout_s=1.0)  # explicit: no silent fallback


def test_unknown_weights_value_is_an_error():
    with pytest.raises(model_mod.WeightsUnavailable, match="no such file"):
        model_mod.load_model("/no/such/weights.weights.h5")


def test_bfloat16_serves_the_same_model_within_its_precision():
    """MODEL_PRECISION=bfloat16: the same random weights computed in bfloat16 give the
    float32 model's probabilities within bfloat16's precision, and say so in the id."""
    import numpy as np

    from inference import model as model_mod

    f32 = model_mod.load_model("random", 32)
    b16 = model_mod.load_model("random", 32, precision="bfloat16")
    assert b16.id == f32.id + "-bf16" and f32.id.endswith("-32")
    x = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    p32, p16 = f32.predict(x), b16.predict(x)
    assert p16.dtype == np.float32 and p16.shape == p32.shape == (16, 10)
    assert np.allclose(p16.sum(axis=1), 1.0, atol=1e-2)
    assert np.max(np.abs(p16 - p32)) < 0.1  # bfloat16 keeps 8 bits of mantissa
    with pytest.raises(ValueError, match="precision"):
        model_mod.load_model("random", 32, precision="float16")
