"""INFERENCE_MODE=embedded (consumers/embedded.py): the inference consumer's client answered
by the service's request core on a model in the consumer's own process - the same
PredictResponse, per-image errors, refusals and start-up limit check as over HTTP, no
socket, no Flask."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from common.labels import CIFAR10_CLASSES
from common.schema import encode_png
from common.settings import InferenceClientSettings
from tests.binaries import required_module
from tests.checkpoints import write_checkpoint
from tests.support import requirement_names

required_module("torch")

from consumers import inference  # noqa: E402
from consumers.embedded import EMBEDDED_URL, embedded_client  # noqa: E402
from consumers.predict_client import BatchRejected, service_limits  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("weights"))
    cfg = InferenceClientSettings(inference_mode="embedded", retry_initial_s=0.05, retry_max_s=0.2)
    c = embedded_client(cfg, {"MODEL_ENGINE": "torch", "MODEL_WEIGHTS": str(checkpoint),
                              "MODEL_BATCH_MAX_IMAGES": 16})
    # /v1/model answers 503 while the model loads: the start-up check waits, as for a service.
    assert service_limits(c, cfg, threading.Event()) == {EMBEDDED_URL: 128}
    return c


def test_predict_files_answers_like_the_service(client):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(photo, format="JPEG")
    items = [(f"e{i}", encode_png(p), "image/png") for i, p in enumerate(pixels)]
    items.insert(2, ("photo", photo.getvalue(), "image/jpeg"))
    items.insert(4, ("broken", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"))
    body = client.predict_files(items)
    preds = body["predictions"]
    assert [p["image_id"] for p in preds] == [i for i, _, _ in items] and "error" in preds[4]
    assert body["model"].startswith("cifar10_resnet20-") and body["model"].endswith("-32")
    # The labels are the model's on the same pixels.
    info = client.model_info(EMBEDDED_URL)
    assert info["id"] == body["model"] and info["classes"] == list(CIFAR10_CLASSES)
    labels = [p["label"] for k, p in enumerate(preds) if k not in (2, 4)]
    again = client.predict_files([item for k, item in enumerate(items) if k not in (2, 4)])
    assert [p["label"] for p in again["predictions"]] == labels
    with pytest.raises(BatchRejected, match="MAX_REQUEST_IMAGES"):
        client.predict_files(items * 17)  # 136 images, over 128: refused whole, as over HTTP


class Started(Exception):
    """main() got past its checks and began consuming."""


@pytest.mark.parametrize("batch, outcome", [("16", "consuming"), ("200", 2)])
def test_the_consumer_runs_the_model_itself_within_its_limit(monkeypatch, batch, outcome):
    """main() with INFERENCE_MODE=embedded: no service URL is asked (nothing listens there),
    the in-process model's /v1/model is, and a batch size over its MAX_REQUEST_IMAGES is
    refused as for a service."""
    made = []

    def started(*_a, **_k):
        raise Started

    def real_embedded_client(cfg):
        made.append(cfg)
        return embedded_client(cfg)

    monkeypatch.setattr(inference, "setup_logging", lambda *a, **k: None)
    monkeypatch.setattr(inference, "stop_event", threading.Event)
    monkeypatch.setattr(inference, "make_consumer", started)
    monkeypatch.setattr("consumers.embedded.embedded_client", real_embedded_client)
    for name, value in {"INFERENCE_MODE": "embedded", "INFERENCE_URL": "http://127.0.0.1:9",
                        "MODEL_ENGINE": "torch", "MODEL_WEIGHTS": "random", "RETRY_INITIAL_S": "0.05",
                        "RETRY_MAX_S": "0.2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("INFERENCE_TOKEN", raising=False)
    try:
        result = inference.main(["--batch-size", batch])
    except Started:
        result = "consuming"
    assert result == outcome and len(made) == 1


NO_FLASK = """
import importlib.metadata
import json
import sys
from common.schema import encode_png
from common.settings import InferenceClientSettings
import numpy as np
from consumers import inference
from consumers.embedded import embedded_client
client = embedded_client(InferenceClientSettings(inference_mode="embedded"))
assert client.model_host.wait_ready(120), client.model_host.error
body = client.predict_files([("a", encode_png(np.zeros((32, 32, 3), np.uint8)), "image/png")])
assert body["predictions"][0]["image_id"] == "a", body
top = {m.split(".")[0] for m in list(sys.modules)}
dists = importlib.metadata.packages_distributions()
print(json.dumps({"servers": sorted(top & {"flask", "werkzeug", "gunicorn"}),
                  "distributions": sorted({d.lower().replace("_", "-") for m in top for d in dists.get(m, [])})}))
"""


def test_the_embedded_consumer_loads_no_flask():
    """The embedded consumer, its model loaded and a batch answered, has imported neither
    Flask, Werkzeug nor Gunicorn: no HTTP server stack in the consumer (issue #25).  And every
    package of the project's lock it imported is in requirements/embedded-torch.txt, the group
    the consumers' VM installs in this mode (roles/iot_app; no Flask, no Gunicorn there)."""
    env = {**os.environ, "MODEL_ENGINE": "torch", "MODEL_WEIGHTS": "random", "METRICS_ENABLED": "true"}
    out = subprocess.run([sys.executable, "-c", NO_FLASK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["servers"] == []
    pinned = requirement_names("requirements.txt")  # every package the project pins, any group
    imported = set(seen["distributions"]) & pinned
    assert {"torch", "numpy", "kafka-python"} <= imported, imported  # the check sees the consumer's imports
    missing = imported - requirement_names("requirements/embedded-torch.txt")
    assert not missing, f"the embedded consumer imports {sorted(missing)}, which its VM does not install"


def test_the_models_metrics_are_the_consumers(client):
    """The model's iot_service_* metrics are in this process's default registry, the one the
    consumer's /metrics serves (common.metrics.serve)."""
    from prometheus_client import REGISTRY

    def predicted():
        return REGISTRY.get_sample_value("iot_service_images_total", {"outcome": "predicted"}) or 0.0

    def answered():
        return REGISTRY.get_sample_value("iot_service_requests_total", {"handler": "/v1/predict", "code": "200"}) or 0.0

    before, requests_before = predicted(), answered()
    client.predict_files([("m", encode_png(np.zeros((32, 32, 3), np.uint8)), "image/png")])
    assert predicted() == before + 1 and answered() == requests_before + 1
    assert REGISTRY.get_sample_value("iot_service_model_ready") == 1.0
