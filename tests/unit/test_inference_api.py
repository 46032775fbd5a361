"""The inference service through Flask's test client, with MODEL_WEIGHTS=random.

One engine (model + dynamic batcher) is loaded for the whole session and shared by
every app built here, so the settings under test (token, limits) cost no reload.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from common.labels import CIFAR10_CLASSES
from common.schema import encode_png

tf_test = pytest.importorskip("tensorflow")

from inference import create_app  # noqa: E402


def b64png(pixels: np.ndarray) -> str:
    return base64.b64encode(encode_png(pixels)).decode("ascii")


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def instances(n: int, prefix: str = "img") -> list[dict]:
    return [{"image_id": f"{prefix}-{i}", "image": b64png(image(i))} for i in range(n)]


@pytest.fixture(scope="session")
def loaded_app():
    app = create_app({"TESTING": True, "MODEL_WEIGHTS": "random", "MODEL_BATCH_MAX_IMAGES": 16,
                      "MODEL_BATCH_DELAY_MS": 20})
    engine = app.extensions["inference_engine"]
    # Loading happens in a background thread: not ready right after create_app.
    assert app.test_client().get("/readyz").status_code in (200, 503)
    assert engine.wait_ready(180), engine.error
    return app


@pytest.fixture(scope="session")
def engine(loaded_app):
    return loaded_app.extensions["inference_engine"]


@pytest.fixture
def client(loaded_app):
    return loaded_app.test_client()


def make_client(engine, **config):
    return create_app({"TESTING": True, "ENGINE": engine, **config}).test_client()


# ------------------------------------------------------------ health / model

def test_health_and_ready(client, engine):
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json == {"status": "ready", "model": "resnet50-untrained-32"}


def test_model_info_says_untrained(client):
    info = client.get("/v1/model").json
    assert info["id"] == "resnet50-untrained-32" and "untrained" in info["id"]
    assert info["untrained"] is True
    assert info["classes"] == list(CIFAR10_CLASSES)
    assert info["input_size"] == 32 and info["max_request_images"] == 128


def test_loading_answers_503_everywhere_but_healthz():
    from inference.engine import Engine
    from common.settings import ServiceSettings

    never_started = Engine(ServiceSettings(model_weights="random"))  # .start() not called
    c = make_client(never_started)
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json == {"status": "loading"}
    assert c.get("/v1/model").status_code == 503
    r = c.post("/v1/predict", json={"instances": instances(1)})
    assert r.status_code == 503 and "loading" in r.json["error"] and r.headers["Retry-After"] == "1"


def test_failed_load_is_reported_not_fatal():
    from inference.engine import Engine
    from common.settings import ServiceSettings

    engine = Engine(ServiceSettings(model_weights="/nonexistent/w.weights.h5")).start()
    assert engine.wait_ready(30) is False
    c = make_client(engine)
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "failed" and "service's log" in r.json["error"]
    assert "nonexistent" not in r.get_data(as_text=True)  # no exception text, no path, unauthenticated
    assert "nonexistent" in engine.error  # the detail is kept for the log
    assert c.get("/healthz").status_code == 200


def test_openapi_document(client, engine):
    from inference.openapi import openapi_document

    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/healthz", "/readyz", "/v1/model", "/v1/predict"} <= set(doc["paths"])
    assert "post" in doc["paths"]["/v1/predict"]
    assert doc == openapi_document(128)  # generated from the models (tests/unit/test_schema.py)
    small = make_client(engine, MAX_REQUEST_IMAGES=4).get("/openapi.json").json
    assert small["components"]["schemas"]["PredictRequest"]["properties"]["instances"]["maxItems"] == 4


def test_responses_conform_to_the_models(client):
    from common.models import Health, ModelInfo, PredictResponse, Ready

    Health.model_validate(client.get("/healthz").json, strict=True)
    Ready.model_validate(client.get("/readyz").json, strict=True)
    ModelInfo.model_validate(client.get("/v1/model").json, strict=True)
    body = client.post("/v1/predict", json={"instances": instances(2) + [{"image": "x"}]}).json
    PredictResponse.model_validate(body, strict=True)
    assert body["predictions"][2] == {"image_id": None, "error": "field 'image_id' must be a non-empty string"}


# ------------------------------------------------------------ predict

def test_predict_happy_path_keeps_order(client):
    batch = instances(5)
    r = client.post("/v1/predict", json={"instances": batch})
    assert r.status_code == 200, r.json
    body = r.json
    assert body["model"] == "resnet50-untrained-32"
    assert body["batch_size"] == 5
    assert [p["image_id"] for p in body["predictions"]] == [b["image_id"] for b in batch]
    for p in body["predictions"]:
        assert p["label"] in CIFAR10_CLASSES
        assert 0.0 <= p["confidence"] <= 1.0
        assert p["received_at"] <= p["inferred_at"] <= time.time()
        assert p["inference_ms"] > 0
    assert set(body["timing"]) == {"decode_ms", "inference_ms", "total_ms"}
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"]


def test_predictions_are_per_image_and_deterministic(client, engine):
    """The service answers what the model says for *that* image (not a neighbour's row)."""
    batch = instances(6)
    served = client.post("/v1/predict", json={"instances": batch}).json["predictions"]
    direct = engine.model.predict(np.stack([image(i) for i in range(6)]))
    assert [p["label"] for p in served] == [CIFAR10_CLASSES[k] for k in direct.argmax(axis=1)]
    np.testing.assert_allclose([p["confidence"] for p in served], direct.max(axis=1), rtol=0, atol=1e-5)
    # Same images in reverse order: the same answers, reversed.
    again = client.post("/v1/predict", json={"instances": batch[::-1]}).json["predictions"]
    assert [p["label"] for p in again] == [p["label"] for p in served][::-1]


def test_predictions_follow_the_order_of_instances_even_with_duplicate_ids(client, engine):
    """The guarantee the inference consumer pairs results by: predictions[i] answers
    instances[i], whatever the image ids say (here three instances share one)."""
    corrupt = bytearray(encode_png(image(9)))
    corrupt[60:80] = b"\x00" * 20  # valid header, broken compressed data
    batch = [{"image_id": "twin", "image": b64png(image(1))},
             {"image_id": "twin", "image": base64.b64encode(bytes(corrupt)).decode()},
             {"image_id": "twin", "image": b64png(image(2))}]
    r = client.post("/v1/predict", json={"instances": batch})
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert [p["image_id"] for p in preds] == ["twin"] * 3
    assert "error" in preds[1] and "label" not in preds[1]
    direct = engine.model.predict(np.stack([image(1), image(2)]))
    assert [preds[0]["label"], preds[2]["label"]] == [CIFAR10_CLASSES[k] for k in direct.argmax(axis=1)]
    np.testing.assert_allclose([preds[0]["confidence"], preds[2]["confidence"]], direct.max(axis=1),
                               rtol=0, atol=1e-5)


def test_large_request_is_split_into_dynamic_batches(client, engine):
    before = engine.batcher.batches_run
    batch = instances(40)  # MODEL_BATCH_MAX_IMAGES is 16 here: at least 3 model calls
    r = client.post("/v1/predict", json={"instances": batch})
    assert r.status_code == 200
    assert [p["image_id"] for p in r.json["predictions"]] == [b["image_id"] for b in batch]
    assert all("label" in p for p in r.json["predictions"])
    assert engine.batcher.batches_run - before >= 3


def _png_bytes(mode: str, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_images_get_per_instance_errors(client):
    good = instances(3, "good")
    corrupt = bytearray(encode_png(image(9)))
    corrupt[60:80] = b"\x00" * 20  # valid header, broken compressed data
    bad = [
        {"image_id": "b64", "image": "not base64!!"},
        {"image_id": "notpng", "image": base64.b64encode(b"GIF89a" + b"\0" * 40).decode()},
        {"image_id": "big", "image": base64.b64encode(_png_bytes("RGB", (64, 64))).decode()},
        {"image_id": "gray", "image": base64.b64encode(_png_bytes("L")).decode()},
        {"image_id": "rgba", "image": base64.b64encode(_png_bytes("RGBA")).decode()},
        {"image_id": "corrupt", "image": base64.b64encode(bytes(corrupt)).decode()},
        {"image_id": "truncated", "image": base64.b64encode(encode_png(image(8))[:50]).decode()},
        {"image": b64png(image(1))},
        {"image_id": 7, "image": b64png(image(1))},
        {"image_id": "noimage"},
        {"image_id": "numimage", "image": 12},
    ]
    mixed = [good[0], *bad[:6], good[1], *bad[6:], good[2]]
    r = client.post("/v1/predict", json={"instances": mixed})
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert len(preds) == len(mixed) and r.json["batch_size"] == len(mixed)
    by_pos = dict(enumerate(preds))
    for pos in (0, 7, len(mixed) - 1):
        assert "label" in by_pos[pos] and "error" not in by_pos[pos]
    assert [p["image_id"] for p in preds if "label" in p] == ["good-0", "good-1", "good-2"]
    errors = {p["image_id"]: p["error"] for p in preds if "error" in p}
    assert "base64" in errors["b64"]
    assert "not a PNG" in errors["notpng"]
    assert "64x64" in errors["big"]
    assert "RGB" in errors["gray"] and "RGB" in errors["rgba"]
    assert "corrupt" in errors["corrupt"] and "corrupt" in errors["truncated"]
    assert "image_id" in errors[None]  # the two with a missing / non-string id
    assert sum(1 for p in preds if p["image_id"] is None) == 2
    assert "image" in errors["noimage"] and "image" in errors["numimage"]


def test_instances_are_typed_strictly(client):
    """A bool is not a string, NaN is not base64: per-instance errors, the rest classified."""
    body = (b'{"instances": [{"image_id": true, "image": "QQ=="}, {"image_id": "nan", "image": NaN},'
            b' {"image_id": 9223372036854775808, "image": "QQ=="}, {"image_id": "", "image": "QQ=="},'
            b' {"image_id": "ok", "image": "' + b64png(image(3)).encode() + b'"}]}')
    r = client.post("/v1/predict", data=body, content_type="application/json")
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert preds[0] == {"image_id": None, "error": "field 'image_id' must be a non-empty string"}
    assert preds[1] == {"image_id": "nan", "error": "field 'image' must be a non-empty base64 string"}
    assert preds[2]["image_id"] is None and "image_id" in preds[2]["error"]
    assert preds[3] == {"image_id": "", "error": "field 'image_id' must be a non-empty string"}
    assert preds[4]["image_id"] == "ok" and preds[4]["label"] in CIFAR10_CLASSES


def test_decode_instance_refuses_lone_surrogates():
    from common.schema import InvalidMessage
    from inference.api import decode_instance

    with pytest.raises(InvalidMessage, match="field 'image_id' is not valid Unicode"):
        decode_instance({"image_id": "cam\ud800", "image": b64png(image(1))})


def test_all_bad_images_needs_no_model_call(client, engine):
    before = engine.batcher.batches_run
    r = client.post("/v1/predict", json={"instances": [{"image_id": "x", "image": "@@"}]})
    assert r.status_code == 200
    assert r.json["predictions"] == [{"image_id": "x", "error": "field 'image' is not valid base64"}]
    assert engine.batcher.batches_run == before


@pytest.mark.parametrize("body, fragment", [
    (b"not json", "JSON"),
    (b"\xff\xfe\x00garbage", "JSON"),
    (b"[1, 2]", "object"),
    (b"{}", "instances"),
    (b'{"instances": {"a": 1}}', "list"),
    (b'{"instances": []}', "empty"),
    (b'{"instances": [1]}', "instances[0]"),
    (b'{"instances": [{"image_id": "a", "image": "x"}, "s"]}', "instances[1]"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    (b'{"instances": [{"image_id": "a", "image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}", "JSON"),
    # a lone surrogate is not text (jiter refuses it, as RFC 8259 strings must be Unicode)
    (b'{"instances": [{"image_id": "\\ud800", "image": "QQ=="}]}', "JSON"),
    (b'{"instances": [{"image_id": "a", "image": "QQ=="}], "x": "\\udfff"}', "JSON"),
    (b'{"instances": "abc"}', "list"),
    (b'{"instances": null}', "list"),
    (b'"instances"', "object"),
])
def test_malformed_requests_are_400(client, body, fragment):
    r = client.post("/v1/predict", data=body, content_type="application/json")
    assert r.status_code == 400
    assert r.is_json and fragment in r.json["error"]


def test_too_many_instances_is_400(engine):
    c = make_client(engine, MAX_REQUEST_IMAGES=4)
    r = c.post("/v1/predict", json={"instances": instances(5)})
    assert r.status_code == 400 and "MAX_REQUEST_IMAGES" in r.json["error"]
    assert c.post("/v1/predict", json={"instances": instances(4)}).status_code == 200


def test_the_body_limit_follows_the_image_limit(engine):
    """No MAX_REQUEST_BYTES: the limit is 8 KiB of base64 per allowed image + 64 KiB, so a
    request of empty or oversized instances cannot cost a worker hundreds of MiB."""
    from common.settings import ServiceSettings, request_bytes_limit

    assert request_bytes_limit(ServiceSettings(max_request_images=4)) == 4 * 8192 + 65536
    assert request_bytes_limit(ServiceSettings(max_request_images=4, max_request_bytes=5000)) == 5000
    c = make_client(engine, MAX_REQUEST_IMAGES=4)
    padding = "x" * (4 * 8192 + 65536)
    r = c.post("/v1/predict", json={"instances": instances(1), "padding": padding})
    assert r.status_code == 413 and r.is_json
    assert c.post("/v1/predict", json={"instances": instances(4)}).status_code == 200


def test_an_oversized_image_is_refused_before_it_is_decoded(engine, monkeypatch):
    import common.models as models

    decoded = []
    real = models.decode_image_b64
    monkeypatch.setattr(models, "decode_image_b64", lambda text: decoded.append(len(text)) or real(text))
    c = make_client(engine)
    huge = {"image_id": "x", "image": "A" * (models.MAX_IMAGE_B64_CHARS + 4)}
    r = c.post("/v1/predict", json={"instances": [huge, instances(1)[0]]})
    assert r.status_code == 200  # a per-image error; the other image is classified
    assert "longer than" in r.json["predictions"][0]["error"] and "label" in r.json["predictions"][1]
    assert not [n for n in decoded if n > models.MAX_IMAGE_B64_CHARS]


def test_body_over_limit_is_413(engine):
    c = make_client(engine, MAX_REQUEST_BYTES=8000)  # one random-pixel image is ~4.2 kB
    r = c.post("/v1/predict", json={"instances": instances(10)})
    assert r.status_code == 413 and r.is_json and "error" in r.json
    assert c.post("/v1/predict", json={"instances": instances(1)}).status_code == 200


def test_bearer_token(engine):
    c = make_client(engine, INFERENCE_TOKEN="s3cret")
    body = {"instances": instances(1)}
    assert c.post("/v1/predict", json=body).status_code == 401
    r = c.post("/v1/predict", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.is_json and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/v1/model", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert c.get("/v1/model").status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/v1/predict", json=body, headers=ok).status_code == 200
    assert c.get("/v1/model", headers=ok).status_code == 200
    # Health endpoints stay open.
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_http_errors_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.is_json and "error" in r.json
    r = client.get("/v1/predict")
    assert r.status_code == 405 and r.is_json and "POST" in r.headers["Allow"]


def test_model_failure_is_503_not_500(engine, monkeypatch):
    def boom(images):
        raise RuntimeError("simulated model fault")

    monkeypatch.setattr(engine.batcher, "_run", boom)
    r = make_client(engine).post("/v1/predict", json={"instances": instances(2)})
    assert r.status_code == 503 and "RuntimeError" in r.json["error"]
    monkeypatch.undo()
    assert make_client(engine).post("/v1/predict", json={"instances": instances(2)}).status_code == 200


def test_a_timed_out_request_leaves_nothing_behind_for_the_model(engine, monkeypatch):
    """A request that timed out (503) has its chunks dropped from the dynamic batcher's
    queue: they never reach the model, so abandoned work costs nothing."""
    from tests.support import HANG_GUARD_S

    real, seen = engine.batcher._run, []
    entered, gate = threading.Event(), threading.Event()

    def held(images):
        seen.append(len(images))
        entered.set()
        assert gate.wait(HANG_GUARD_S)
        return real(images)

    monkeypatch.setattr(engine.batcher, "_run", held)
    # A full model batch (MODEL_BATCH_MAX_IMAGES=16): taken at once and held in the model.
    blocker = engine.batcher.submit(np.stack([image(i) for i in range(16)]))
    try:
        assert entered.wait(HANG_GUARD_S)
        r = make_client(engine, INFERENCE_REQUEST_TIMEOUT_S=0.05).post("/v1/predict",
                                                                       json={"instances": instances(3)})
        assert r.status_code == 503 and "timed out" in r.json["error"]
        assert engine.batcher.queued_images() == 0, "the abandoned request's images are still queued"
    finally:
        gate.set()
    for f in blocker:
        f.result(timeout=HANG_GUARD_S)
    assert make_client(engine).post("/v1/predict", json={"instances": instances(2)}).status_code == 200
    assert seen == [16, 2]  # the 3 abandoned images never reached the model


def test_request_timeout_and_slowdown_hook(engine, monkeypatch):
    monkeypatch.setattr(engine.batcher, "slowdown_s", 0.5)
    c = make_client(engine, INFERENCE_REQUEST_TIMEOUT_S=0.1)
    r = c.post("/v1/predict", json={"instances": instances(1)})
    assert r.status_code == 503 and "timed out" in r.json["error"]
    t0 = time.perf_counter()
    r = make_client(engine).post("/v1/predict", json={"instances": instances(1)})
    assert r.status_code == 200 and time.perf_counter() - t0 >= 0.5
    assert r.json["predictions"][0]["inference_ms"] >= 500


# ------------------------------------------------------------ dynamic batching under concurrency

def test_concurrent_requests_each_get_their_own_predictions(loaded_app, engine):
    """Many threads at once: requests are merged into shared model calls, yet every
    caller gets exactly its own ids, in order, with the labels of its own images."""
    n_threads, per_request = 12, 3
    reference = engine.model.predict(np.stack([image(1000 + i) for i in range(n_threads * per_request)]))
    start = threading.Barrier(n_threads)
    failures, merged = [], []
    before = engine.batcher.batches_run

    def worker(t: int) -> None:
        client = loaded_app.test_client()
        idx = [t * per_request + k for k in range(per_request)]
        batch = [{"image_id": f"t{t}-{k}", "image": b64png(image(1000 + k))} for k in idx]
        start.wait()
        for _ in range(2):
            r = client.post("/v1/predict", json={"instances": batch})
            if r.status_code != 200:
                failures.append((t, r.status_code, r.json))
                return
            preds = r.json["predictions"]
            ids = [p["image_id"] for p in preds]
            if ids != [b["image_id"] for b in batch]:
                failures.append((t, "ids", ids))
            labels = [p["label"] for p in preds]
            expected = [CIFAR10_CLASSES[int(reference[k].argmax())] for k in idx]
            if labels != expected:
                failures.append((t, "labels", labels, expected))
            # An untrained net says "bird" to most noise images, so labels alone would not
            # catch a swapped row; the confidences differ per image by far more than 1e-5.
            confidences = [p["confidence"] for p in preds]
            if not np.allclose(confidences, reference[idx].max(axis=1), rtol=0, atol=1e-5):
                failures.append((t, "confidences", confidences))
            merged.append(max(p["inference_ms"] for p in preds))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not failures, failures[:3]
    assert len(merged) == 2 * n_threads
    calls = engine.batcher.batches_run - before
    # 24 requests of 3 images: with merging, far fewer model calls than requests.
    assert calls < 2 * n_threads, calls
