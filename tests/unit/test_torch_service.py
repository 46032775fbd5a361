"""The inference service with MODEL_ENGINE=torch, through Flask's test client (create_app):
the same API, dynamic batcher, /v1/model, metrics and health checks as the TensorFlow model."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from common.labels import CIFAR10_CLASSES
from common.schema import encode_png
from tests.binaries import required_module
from tests.checkpoints import write_checkpoint

required_module("torch")

from inference import create_app  # noqa: E402
from inference.weights import file_sha256  # noqa: E402


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def jpeg(width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        buf, format="JPEG")
    return buf.getvalue()


def ready_app(**config):
    app = create_app({"TESTING": True, "MODEL_ENGINE": "torch", "MODEL_BATCH_MAX_IMAGES": 8,
                      "MODEL_BATCH_DELAY_MS": 5, **config})
    host = app.extensions["model_host"]
    host.wait_ready(120)
    return app, host


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def served(checkpoint):
    app, host = ready_app(MODEL_WEIGHTS=str(checkpoint))
    assert host.ready, host.error
    return app, host


def test_health_ready_and_model_info(served, checkpoint):
    app, _host = served
    client = app.test_client()
    sha = file_sha256(str(checkpoint))
    model_id = f"cifar10_resnet20-{sha[:8]}-32"
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready", "model": model_id}
    info = client.get("/v1/model").json
    assert info["id"] == model_id and info["input_size"] == 32 and info["untrained"] is False
    assert info["classes"] == list(CIFAR10_CLASSES) and info["weights_sha256"] == sha
    assert info["weights_source"] == f"file:{checkpoint}" and info["model_batch_max_images"] == 8


def test_predict_json_and_multipart_with_the_torch_model(served):
    app, host = served
    client = app.test_client()
    x = images(10)
    expected = host.model.predict(x)  # the engine itself, on the same pixels
    body = {"instances": [{"image_id": f"t{i}", "image": base64.b64encode(encode_png(x[i])).decode()}
                          for i in range(10)]}
    r = client.post("/v1/predict", json=body)  # 10 images, dynamic batches of at most 8
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert r.json["model"] == host.model.id and [p["image_id"] for p in preds] == [f"t{i}" for i in range(10)]
    assert [p["label"] for p in preds] == [CIFAR10_CLASSES[k] for k in expected.argmax(axis=1)]
    assert all(abs(p["confidence"] - expected[i].max()) < 1e-5 for i, p in enumerate(preds))

    data = {"image_id": ["png", "photo", "broken"],
            "image": [(io.BytesIO(encode_png(x[0])), "a.png", "image/png"), (io.BytesIO(jpeg()), "b.jpg", "image/jpeg"),
                      (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "c.png", "image/png")]}
    r = client.post("/v1/predict", data=data, content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    png, photo, broken = r.json["predictions"]
    assert png["label"] == preds[0]["label"] and photo["label"] in CIFAR10_CLASSES  # 640x480 resized to 32
    assert "error" in broken


def test_metrics_count_the_torch_models_work(served):
    from prometheus_client.parser import text_string_to_metric_families

    app, _host = served
    client = app.test_client()
    client.post("/v1/predict", json={"instances": [{"image_id": "m", "image": base64.b64encode(
        encode_png(images(1)[0])).decode()}]})
    text = client.get("/metrics").get_data(as_text=True)
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
               if not s.labels or s.name.startswith("iot_service_model_batch_images_count")}
    assert samples["iot_service_model_ready"] == 1 and samples["iot_service_model_batch_images_count"] >= 1


def test_pretrained_weights_are_downloaded_and_served(tmp_path, monkeypatch):
    """MODEL_WEIGHTS=pretrained through the service: downloaded from TORCH_WEIGHTS_URL (a
    file:// mirror holding a checkpoint in the published format), verified, cached, served."""
    from inference import cifar_resnet, weights

    monkeypatch.setattr(weights, "cache_dirs", lambda: [str(tmp_path / "cache")])
    published = write_checkpoint(tmp_path / "mirror", seed=1)
    monkeypatch.setitem(cifar_resnet.CHECKPOINTS, "cifar10_resnet20", published.name)
    app, host = ready_app(MODEL_WEIGHTS="pretrained", TORCH_WEIGHTS_URL=(tmp_path / "mirror").as_uri())
    assert host.ready, host.error
    info = app.test_client().get("/v1/model").json
    assert info["id"] == "cifar10_resnet20-pretrained-32" and info["untrained"] is False
    assert info["weights_sha256"] == file_sha256(str(published))
    assert (tmp_path / "cache" / published.name).is_file()


def test_random_weights_are_flagged_untrained():
    app, host = ready_app(MODEL_WEIGHTS="random")
    assert host.ready, host.error
    info = app.test_client().get("/v1/model").json
    assert info["id"] == "cifar10_resnet20-untrained-32" and info["untrained"] is True


def test_a_cifar100_model_answers_cifar100_labels(tmp_path):
    """The contract's labels (common/http_models.py Prediction.label) carry CIFAR-100's fine
    names: a cifar100_* model loads and its answers name them."""
    from common.labels import CIFAR100_CLASSES
    from inference.serving import unsayable_classes

    assert unsayable_classes(CIFAR100_CLASSES) == [] and unsayable_classes(["not-a-class"]) == ["not-a-class"]
    path = write_checkpoint(tmp_path, "cifar100_resnet20")
    app, host = ready_app(MODEL_WEIGHTS=str(path), DATASET="cifar100")
    assert host.ready, host.error
    info = app.test_client().get("/v1/model").json
    assert info["classes"] == list(CIFAR100_CLASSES)
