"""The inference service through Flask's test client, with MODEL_WEIGHTS=random.

One ModelHost (model + dynamic batcher) is loaded for the whole session and shared by
every app built here, so the settings under test (token, limits) cost no reload.
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from common.labels import CIFAR10_CLASSES
from common.schema import encode_png
from tests.binaries import required_module

required_module("tensorflow")

from inference import create_app  # noqa: E402
from inference.batcher import padded_size  # noqa: E402


def b64png(pixels: np.ndarray) -> str:
    return base64.b64encode(encode_png(pixels)).decode("ascii")


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def png(seed: int) -> bytes:
    return encode_png(image(seed))


def jpeg_bytes(size=(640, 480), seed: int = 0, mode: str = "RGB") -> bytes:
    """A photo-like JPEG (smooth gradients plus noise), ``size`` = (width, height)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
    pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A valid 32x32 PNG whose IHDR (CRC fixed) claims ``width`` x ``height``: a decompression bomb."""
    data = bytearray(png(0))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def forged_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header claims ``width`` x ``height``."""
    data = bytearray(jpeg_bytes((64, 48)))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def instances(n: int, prefix: str = "img") -> list[dict]:
    return [{"image_id": f"{prefix}-{i}", "image": b64png(image(i))} for i in range(n)]


@pytest.fixture(scope="session")
def loaded_app():
    app = create_app({"TESTING": True, "MODEL_WEIGHTS": "random", "MODEL_BATCH_MAX_IMAGES": 16,
                      "MODEL_BATCH_DELAY_MS": 20})
    model_host = app.extensions["model_host"]
    # Loading happens in a background thread: not ready right after create_app.
    assert app.test_client().get("/readyz").status_code in (200, 503)
    assert model_host.wait_ready(180), model_host.error
    return app


@pytest.fixture(scope="session")
def model_host(loaded_app):
    return loaded_app.extensions["model_host"]


@pytest.fixture
def client(loaded_app):
    return loaded_app.test_client()


def make_client(model_host, **config):
    return create_app({"TESTING": True, "MODEL_HOST": model_host, **config}).test_client()


# ------------------------------------------------------------ health / model

def test_health_and_ready(client, model_host):
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
    from inference.serving import ModelHost
    from common.settings import ServiceSettings

    never_started = ModelHost(ServiceSettings(model_weights="random"))  # .start() not called
    c = make_client(never_started)
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json == {"status": "loading"}
    assert c.get("/v1/model").status_code == 503
    r = c.post("/v1/predict", json={"instances": instances(1)})
    assert r.status_code == 503 and "loading" in r.json["error"] and r.headers["Retry-After"] == "1"


def test_failed_load_is_reported_not_fatal():
    from inference.serving import ModelHost
    from common.settings import ServiceSettings

    model_host = ModelHost(ServiceSettings(model_weights="/nonexistent/w.weights.h5")).start()
    assert model_host.wait_ready(30) is False
    c = make_client(model_host)
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "failed" and "service's log" in r.json["error"]
    assert "nonexistent" not in r.get_data(as_text=True)  # no exception text, no path, unauthenticated
    assert "nonexistent" in model_host.error  # the detail is kept for the log
    assert c.get("/healthz").status_code == 200


def test_openapi_document(client, model_host):
    from inference.openapi import openapi_document

    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/healthz", "/readyz", "/v1/model", "/v1/predict"} <= set(doc["paths"])
    assert "post" in doc["paths"]["/v1/predict"]
    assert doc == openapi_document(128)  # generated from the models (tests/unit/test_schema.py)
    small = make_client(model_host, MAX_REQUEST_IMAGES=4).get("/openapi.json").json
    assert small["components"]["schemas"]["PredictRequest"]["properties"]["instances"]["maxItems"] == 4
    form = small["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["properties"]["image"]["maxItems"] == 4
    assert form["schema"]["properties"]["image"]["items"]["format"] == "binary"
    assert form["encoding"]["image"]["contentType"] == "image/png, image/jpeg"
    assert "415" in doc["paths"]["/v1/predict"]["post"]["responses"]


def test_responses_conform_to_the_models(client):
    from common.http_models import Health, ModelInfo, PredictResponse, Ready

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


def test_predictions_are_per_image_and_deterministic(client, model_host):
    """The service answers what the model says for *that* image (not a neighbour's row)."""
    batch = instances(6)
    served = client.post("/v1/predict", json={"instances": batch}).json["predictions"]
    direct = model_host.model.predict(np.stack([image(i) for i in range(6)]))
    assert [p["label"] for p in served] == [CIFAR10_CLASSES[k] for k in direct.argmax(axis=1)]
    np.testing.assert_allclose([p["confidence"] for p in served], direct.max(axis=1), rtol=0, atol=1e-5)
    # Same images in reverse order: the same answers, reversed.
    again = client.post("/v1/predict", json={"instances": batch[::-1]}).json["predictions"]
    assert [p["label"] for p in again] == [p["label"] for p in served][::-1]


def test_predictions_follow_the_order_of_instances_even_with_duplicate_ids(client, model_host):
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
    direct = model_host.model.predict(np.stack([image(1), image(2)]))
    assert [preds[0]["label"], preds[2]["label"]] == [CIFAR10_CLASSES[k] for k in direct.argmax(axis=1)]
    np.testing.assert_allclose([preds[0]["confidence"], preds[2]["confidence"]], direct.max(axis=1),
                               rtol=0, atol=1e-5)


def test_large_request_is_split_into_dynamic_batches(client, model_host):
    before = model_host.batcher.batches_run
    batch = instances(40)  # MODEL_BATCH_MAX_IMAGES is 16 here: at least 3 model calls
    r = client.post("/v1/predict", json={"instances": batch})
    assert r.status_code == 200
    assert [p["image_id"] for p in r.json["predictions"]] == [b["image_id"] for b in batch]
    assert all("label" in p for p in r.json["predictions"])
    assert model_host.batcher.batches_run - before >= 3


def _png_bytes(mode: str, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_images_get_per_instance_errors(client):
    good = instances(3, "good")
    corrupt = bytearray(encode_png(image(9)))
    corrupt[60:80] = b"\x00" * 20  # valid header, broken compressed data
    bad = [
        {"image_id": "b64", "image": "not base64!!"},
        {"image_id": "notpng", "image": base64.b64encode(b"GIF89a" + b"\0" * 40).decode()},
        {"image_id": "bomb", "image": base64.b64encode(forged_png(50000, 50000)).decode()},
        {"image_id": "corrupt", "image": base64.b64encode(bytes(corrupt)).decode()},
        {"image_id": "truncated", "image": base64.b64encode(encode_png(image(8))[:50]).decode()},
        {"image": b64png(image(1))},
        {"image_id": 7, "image": b64png(image(1))},
        {"image_id": "noimage"},
        {"image_id": "numimage", "image": 12},
    ]
    mixed = [good[0], *bad[:4], good[1], *bad[4:], good[2]]
    r = client.post("/v1/predict", json={"instances": mixed})
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert len(preds) == len(mixed) and r.json["batch_size"] == len(mixed)
    by_pos = dict(enumerate(preds))
    for pos in (0, 5, len(mixed) - 1):
        assert "label" in by_pos[pos] and "error" not in by_pos[pos]
    assert [p["image_id"] for p in preds if "label" in p] == ["good-0", "good-1", "good-2"]
    errors = {p["image_id"]: p["error"] for p in preds if "error" in p}
    assert "base64" in errors["b64"]
    assert errors["notpng"] == "image is not a PNG or JPEG"
    assert errors["bomb"] == ("image is 50000x50000 (2,500,000,000 pixels), over the limit of 16,777,216 "
                              "(MAX_IMAGE_PIXELS)")
    assert "corrupt" in errors["corrupt"] and "corrupt" in errors["truncated"]
    assert "image_id" in errors[None]  # the two with a missing / non-string id
    assert sum(1 for p in preds if p["image_id"] is None) == 2
    assert "image" in errors["noimage"] and "image" in errors["numimage"]


def test_json_images_of_any_size_and_mode_are_converted_and_resized(client, model_host):
    """PNG or JPEG, RGB or not, any size: converted to RGB and resized to the model's input
    size (32 here) by the service, then predicted as that array would be."""
    from inference.api import decode_image

    pngs = {"big": _png_bytes("RGB", (64, 48)), "gray": _png_bytes("L"), "rgba": _png_bytes("RGBA"),
            "palette": _png_bytes("P", (20, 20)), "jpeg": jpeg_bytes((640, 480))}
    batch = [{"image_id": k, "image": base64.b64encode(v).decode()} for k, v in pngs.items()]
    r = client.post("/v1/predict", json={"instances": batch})
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert all("label" in p for p in preds), preds
    arrays = [decode_image(v) for v in pngs.values()]
    assert all(a.shape == (32, 32, 3) and a.dtype == np.uint8 for a in arrays)
    direct = model_host.model.predict(np.stack(arrays))
    np.testing.assert_allclose([p["confidence"] for p in preds], direct.max(axis=1), rtol=0, atol=1e-5)


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


def test_all_bad_images_needs_no_model_call(client, model_host):
    before = model_host.batcher.batches_run
    r = client.post("/v1/predict", json={"instances": [{"image_id": "x", "image": "@@"}]})
    assert r.status_code == 200
    assert r.json["predictions"] == [{"image_id": "x", "error": "field 'image' is not valid base64"}]
    assert model_host.batcher.batches_run == before


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


def test_too_many_instances_is_400(model_host):
    c = make_client(model_host, MAX_REQUEST_IMAGES=4)
    r = c.post("/v1/predict", json={"instances": instances(5)})
    assert r.status_code == 400 and "MAX_REQUEST_IMAGES" in r.json["error"]
    assert c.post("/v1/predict", json={"instances": instances(4)}).status_code == 200


def test_the_body_limit_follows_the_image_limit(model_host):
    """No MAX_REQUEST_BYTES: the limit is, per allowed image, the base64 of MAX_IMAGE_BYTES plus
    1 KiB, plus 64 KiB, capped at 64 MiB, so a request of empty or oversized instances cannot
    cost a worker more than what it may legitimately receive."""
    from common.wire import b64_chars
    from common.settings import REQUEST_BYTES_CAP, ServiceSettings, request_bytes_limit

    assert b64_chars(3) == 4 and b64_chars(4) == 8 and b64_chars(1024 * 1024) == 1398104
    small = ServiceSettings(max_request_images=4, max_image_bytes=6144)
    assert request_bytes_limit(small) == 4 * (8192 + 1024) + 65536
    assert request_bytes_limit(ServiceSettings(max_request_images=4)) == 4 * (1398104 + 1024) + 65536
    assert request_bytes_limit(ServiceSettings()) == REQUEST_BYTES_CAP == 64 * 1024 * 1024
    assert request_bytes_limit(ServiceSettings(max_request_images=4, max_request_bytes=5000)) == 5000
    c = make_client(model_host, MAX_REQUEST_IMAGES=4, MAX_IMAGE_BYTES=6144)
    padding = "x" * (4 * (8192 + 1024) + 65536)
    r = c.post("/v1/predict", json={"instances": instances(1), "padding": padding})
    assert r.status_code == 413 and r.is_json
    assert c.post("/v1/predict", json={"instances": instances(4)}).status_code == 200


def test_an_oversized_image_is_refused_before_it_is_decoded(model_host, monkeypatch):
    import common.http_models as models
    from common.wire import b64_chars

    decoded = []
    real = models.decode_image_b64
    monkeypatch.setattr(models, "decode_image_b64", lambda text: decoded.append(len(text)) or real(text))
    c = make_client(model_host, MAX_IMAGE_BYTES=6000)
    limit = b64_chars(6000)
    huge = {"image_id": "x", "image": "A" * (limit + 4)}
    r = c.post("/v1/predict", json={"instances": [huge, instances(1)[0]]})
    assert r.status_code == 200  # a per-image error; the other image is classified
    assert "longer than" in r.json["predictions"][0]["error"] and "label" in r.json["predictions"][1]
    assert not [n for n in decoded if n > limit]


def test_body_over_limit_is_413(model_host):
    c = make_client(model_host, MAX_REQUEST_BYTES=8000)  # one random-pixel image is ~4.2 kB
    r = c.post("/v1/predict", json={"instances": instances(10)})
    assert r.status_code == 413 and r.is_json and "error" in r.json
    assert c.post("/v1/predict", json={"instances": instances(1)}).status_code == 200


def test_bearer_token(model_host):
    c = make_client(model_host, INFERENCE_TOKEN="s3cret")
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


def test_model_failure_is_503_not_500(model_host, monkeypatch):
    def boom(images):
        raise RuntimeError("simulated model fault")

    monkeypatch.setattr(model_host.batcher, "_run", boom)
    r = make_client(model_host).post("/v1/predict", json={"instances": instances(2)})
    assert r.status_code == 503 and "RuntimeError" in r.json["error"]
    monkeypatch.undo()
    assert make_client(model_host).post("/v1/predict", json={"instances": instances(2)}).status_code == 200


def test_a_timed_out_request_leaves_nothing_behind_for_the_model(model_host, monkeypatch):
    """A request that timed out (503) has its chunks dropped from the dynamic batcher's
    queue: they never reach the model, so abandoned work costs nothing."""
    from tests.support import HANG_GUARD_S

    real, seen = model_host.batcher._run, []
    entered, gate = threading.Event(), threading.Event()

    def held(images):
        seen.append(len(images))
        entered.set()
        assert gate.wait(HANG_GUARD_S)
        return real(images)

    monkeypatch.setattr(model_host.batcher, "_run", held)
    # A full model batch (MODEL_BATCH_MAX_IMAGES=16): taken at once and held in the model.
    blocker = model_host.batcher.submit(np.stack([image(i) for i in range(16)]))
    try:
        assert entered.wait(HANG_GUARD_S)
        r = make_client(model_host, INFERENCE_REQUEST_TIMEOUT_S=0.05).post("/v1/predict",
                                                                       json={"instances": instances(3)})
        assert r.status_code == 503 and "timed out" in r.json["error"]
        assert model_host.batcher.queued_images() == 0, "the abandoned request's images are still queued"
    finally:
        gate.set()
    for f in blocker:
        f.result(timeout=HANG_GUARD_S)
    assert make_client(model_host).post("/v1/predict", json={"instances": instances(2)}).status_code == 200
    assert seen == [16, 2]  # the 3 abandoned images never reached the model


def test_request_timeout_and_slowdown_hook(model_host, monkeypatch):
    """INFERENCE_SLOWDOWN_S makes every model call at least that slow: a request that may
    wait less is answered 503; one that may wait longer gets the slowdown in its
    inference_ms (measured without waiting for it: tests.support.SkippedSleep)."""
    from inference import batcher as batcher_module
    from tests.support import SkippedSleep

    monkeypatch.setattr(model_host.batcher, "slowdown_s", 0.5)
    c = make_client(model_host, INFERENCE_REQUEST_TIMEOUT_S=0.1)
    r = c.post("/v1/predict", json={"instances": instances(1)})
    assert r.status_code == 503 and "timed out" in r.json["error"]
    clock = SkippedSleep()
    monkeypatch.setattr(batcher_module, "time", clock)
    r = make_client(model_host).post("/v1/predict", json={"instances": instances(1)})
    assert r.status_code == 200
    assert clock.slept and set(clock.slept) == {0.5}  # the abandoned call may have slept here too
    assert r.json["predictions"][0]["inference_ms"] >= 500


# ------------------------------------------------------------ multipart/form-data

def multipart(pairs) -> dict:
    """Test-client data for (image_id, bytes, content type) triples: per image an image_id
    text part then an image file part, in order."""
    return {"image_id": [p[0] for p in pairs],
            "image": [(io.BytesIO(p[1]), "image" + (".jpg" if "jpeg" in p[2] else ".png"), p[2]) for p in pairs]}


def post_parts(c, pairs, **kwargs):
    return c.post("/v1/predict", data=multipart(pairs), content_type="multipart/form-data", **kwargs)


def test_multipart_happy_path_png_and_jpeg(client, model_host):
    from inference.api import decode_image

    photo = jpeg_bytes((640, 480))
    pairs = [("png-0", png(0), "image/png"), ("jpeg-0", photo, "image/jpeg"), ("png-1", png(1), "image/png")]
    r = post_parts(client, pairs)
    assert r.status_code == 200, r.json
    body = r.json
    assert body["batch_size"] == 3 and [p["image_id"] for p in body["predictions"]] == ["png-0", "jpeg-0", "png-1"]
    assert all(p["label"] in CIFAR10_CLASSES for p in body["predictions"])
    # the same answers as for these arrays (the 32x32 PNGs are not resized: the very pixels)
    np.testing.assert_array_equal(decode_image(png(0)), image(0))
    direct = model_host.model.predict(np.stack([image(0), decode_image(photo), image(1)]))
    np.testing.assert_allclose([p["confidence"] for p in body["predictions"]], direct.max(axis=1),
                               rtol=0, atol=1e-5)
    # and the same as the JSON style
    j = client.post("/v1/predict", json={"instances": [{"image_id": i, "image": base64.b64encode(b).decode()}
                                                       for i, b, _ in pairs]}).json
    assert [p["label"] for p in j["predictions"]] == [p["label"] for p in body["predictions"]]


def test_multipart_mixed_batch_gets_per_image_errors(model_host):
    c = make_client(model_host, MAX_IMAGE_BYTES=64 * 1024)
    corrupt = bytearray(png(9))
    corrupt[60:80] = b"\x00" * 20
    big = np.random.default_rng(3).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 kB of noise
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    pairs = [("ok-0", png(0), "image/png"),
             ("corrupt", bytes(corrupt), "image/png"),
             ("bomb", forged_png(50000, 50000), "image/png"),
             ("jpeg-bomb", forged_jpeg(65000, 65000), "image/jpeg"),
             ("heavy", buf.getvalue(), "image/png"),
             ("ok-1", jpeg_bytes((320, 240), seed=1), "image/jpeg"),
             ("gif", b"GIF89a" + b"\0" * 40, "image/png"),
             ("text", png(2), "text/plain"),
             ("", png(3), "image/png"),
             ("ok-2", png(4), "image/png")]
    r = post_parts(c, pairs)
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert [p["image_id"] for p in preds] == [p[0] for p in pairs]
    assert [i for i, p in enumerate(preds) if "label" in p] == [0, 5, 9]
    errors = {p["image_id"]: p["error"] for p in preds if "error" in p}
    assert "corrupt" in errors["corrupt"]
    assert errors["bomb"] == ("image is 50000x50000 (2,500,000,000 pixels), over the limit of 16,777,216 "
                              "(MAX_IMAGE_PIXELS)")
    assert errors["jpeg-bomb"].startswith("image is 65000x65000 (4,225,000,000 pixels), over the limit")
    assert errors["heavy"] == f"image is {len(buf.getvalue()):,} bytes, over the limit of 65,536 (MAX_IMAGE_BYTES)"
    assert errors["gif"] == "image is not a PNG or JPEG"
    assert "text/plain" in errors["text"]
    assert errors[""] == "field 'image_id' must be a non-empty string"


def test_pixel_limit_is_a_setting(model_host):
    c = make_client(model_host, MAX_IMAGE_PIXELS=640 * 480 - 1)
    r = post_parts(c, [("a", jpeg_bytes((640, 480)), "image/jpeg"), ("b", jpeg_bytes((100, 100)), "image/jpeg")])
    preds = r.json["predictions"]
    assert preds[0]["error"] == "image is 640x480 (307,200 pixels), over the limit of 307,199 (MAX_IMAGE_PIXELS)"
    assert "label" in preds[1]


def test_pils_own_bomb_guard_cannot_escape(client, monkeypatch):
    """Were PIL's guard back (a DecompressionBombError from Image.open), it is a per-image error."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    r = post_parts(client, [("a", _png_bytes("RGB", (64, 64)), "image/png")])
    assert r.status_code == 200 and "DecompressionBomb" in r.json["predictions"][0]["error"]


def test_multipart_greyscale_palette_and_rgba_are_converted(client, model_host):
    from inference.api import decode_image

    images = {"gray": _png_bytes("L"), "rgba": _png_bytes("RGBA"), "palette": _png_bytes("P"),
              "gray-jpeg": jpeg_bytes((100, 80), mode="L"), "1-bit": _png_bytes("1", (40, 40))}
    r = post_parts(client, [(k, v, "image/jpeg" if "jpeg" in k else "image/png") for k, v in images.items()])
    assert r.status_code == 200, r.json
    preds = r.json["predictions"]
    assert all("label" in p for p in preds), preds
    gray = decode_image(images["gray"])
    assert gray.shape == (32, 32, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = np.asarray(Image.open(io.BytesIO(images["rgba"])))
    np.testing.assert_array_equal(decode_image(images["rgba"]), rgba[..., :3])  # alpha dropped
    direct = model_host.model.predict(np.stack([decode_image(v) for v in images.values()]))
    np.testing.assert_allclose([p["confidence"] for p in preds], direct.max(axis=1), rtol=0, atol=1e-5)


def test_a_model_of_another_input_size_gets_resized_images():
    """MODEL_INPUT_SIZE=48: the serving function takes 48x48 images (no resize in the graph),
    the service resizes every image to 48 while decoding, 32x32 PNGs included."""
    from inference.api import ImageLimits, decode_image

    app = create_app({"TESTING": True, "MODEL_WEIGHTS": "random", "MODEL_INPUT_SIZE": 48,
                      "MODEL_BATCH_MAX_IMAGES": 2})
    model_host = app.extensions["model_host"]
    assert model_host.wait_ready(180), model_host.error
    assert model_host.model.input_size == 48 and model_host.model.id == "resnet50-untrained-48"
    # the serving function takes exactly 48x48 (and a wrong call leaves it usable: the check
    # comes before TensorFlow's, which would keep the function's lock, inference/model.py)
    with pytest.raises(ValueError, match="N x 48 x 48 x 3"):
        model_host.model.predict(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    photo = jpeg_bytes((640, 480))
    r = post_parts(app.test_client(), [("png", png(0), "image/png"), ("jpeg", photo, "image/jpeg")])
    assert r.status_code == 200, r.json
    arrays = [decode_image(png(0), ImageLimits(size=48)), decode_image(photo, ImageLimits(size=48))]
    direct = model_host.model.predict(np.stack(arrays))
    np.testing.assert_allclose([p["confidence"] for p in r.json["predictions"]], direct.max(axis=1),
                               rtol=0, atol=1e-5)


def test_decode_image_resizes_to_the_models_input_size():
    from inference.api import ImageLimits, decode_image

    for size in (32, 224):
        out = decode_image(jpeg_bytes((640, 480)), ImageLimits(size=size))
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
    # resized, not cropped: a 2:1 image whose left half is black, right half white
    pixels = np.zeros((50, 100, 3), dtype=np.uint8)
    pixels[:, 50:] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), ImageLimits(size=32))
    assert out[:, :14].max() == 0 and out[:, 18:].min() == 255


@pytest.mark.parametrize("pairs, fragment", [
    ({"image_id": ["a", "b"], "image": [(io.BytesIO(b"x"), "a.png", "image/png")]}, "2 'image_id' parts and 1"),
    ({"image_id": ["a"]}, "1 'image_id' parts and 0"),
    ({"image": [(io.BytesIO(b"x"), "a.png", "image/png")]}, "0 'image_id' parts and 1"),
    ({"image_id": ["a"], "image": ["not a file: no filename"]}, "a filename in its Content-Disposition"),
    ({}, "no images"),
])
def test_multipart_needs_one_image_id_per_image(client, pairs, fragment):
    r = client.post("/v1/predict", data=pairs, content_type="multipart/form-data")
    assert r.status_code == 400 and r.is_json and fragment in r.json["error"], r.json


def test_multipart_limits(model_host):
    c = make_client(model_host, MAX_REQUEST_IMAGES=4)
    r = post_parts(c, [(f"i{k}", png(k), "image/png") for k in range(5)])
    assert r.status_code == 400 and "5 images, over the limit of 4 (MAX_REQUEST_IMAGES)" in r.json["error"]
    assert post_parts(c, [(f"i{k}", png(k), "image/png") for k in range(4)]).status_code == 200
    # more parts than MAX_FORM_PARTS (2 per allowed image + 16): 413 from Werkzeug, as JSON
    r = c.post("/v1/predict", data={"x": ["1"] * 40}, content_type="multipart/form-data")
    assert r.status_code == 413 and r.is_json
    # an image_id over MAX_FORM_MEMORY_SIZE (500 kB)
    r = post_parts(c, [("i" * 600_000, png(0), "image/png")])
    assert r.status_code == 413 and r.is_json
    # over MAX_CONTENT_LENGTH
    r = post_parts(make_client(model_host, MAX_REQUEST_BYTES=8000), [(f"i{k}", png(k), "image/png") for k in range(4)])
    assert r.status_code == 413 and r.is_json
    # a body that is not multipart at all, or cut short: no parts, 400
    for raw in (b"garbage", b"--b\r\nContent-Disposition: form-data; name=\"image_id\"\r\n\r\na"):
        r = c.post("/v1/predict", data=raw, content_type="multipart/form-data; boundary=b")
        assert r.status_code == 400 and r.is_json, (raw, r.status_code)
    r = c.post("/v1/predict", data=b"x", content_type="multipart/form-data")  # no boundary
    assert r.status_code == 400 and r.is_json


def test_the_clients_multipart_body_is_what_the_service_reads(client):
    from consumers.inference import encode_multipart

    items = [("a", png(0), "image/png"), ("b\r\n--x", jpeg_bytes((64, 48)), "image/jpeg"), ("é", png(1), "image/png")]
    body, content_type = encode_multipart(items)
    r = client.post("/v1/predict", data=body, content_type=content_type)
    assert r.status_code == 200, r.json
    assert [p["image_id"] for p in r.json["predictions"]] == ["a", "b\r\n--x", "é"]
    assert all("label" in p for p in r.json["predictions"])


def _werkzeug_parts(body: bytes, content_type: str):
    from werkzeug.formparser import parse_form_data

    _, form, files = parse_form_data({"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
                                      "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)})
    return form.getlist("image_id"), [(f.read(), f.mimetype) for f in files.getlist("image")]


PART = st.tuples(st.sampled_from(["image_id", "image", "other"]), st.booleans(),
                 st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"\r\n", b"--b", b"\r\n--b", b"\r\n\r\n"])),
                 st.sampled_from([None, "image/png", "IMAGE/JPEG; q=1", "text/plain; charset=utf-8",
                                  "text/plain; charset=iso-8859-1"]))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PART, max_size=6), preamble=st.sampled_from([b"", b"junk\r\n"]),
       epilogue=st.sampled_from([b"", b"\r\n", b"junk"]), cut=st.integers(0, 8))
def test_the_fast_multipart_split_agrees_with_werkzeug(parts, preamble, epilogue, cut):
    """Where split_multipart parses a body (else Werkzeug does), it finds what Werkzeug finds."""
    from inference.request_body import split_multipart

    body = preamble
    for name, is_file, data, ctype in parts:
        body += b"--b\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\""
        body += b'; filename="f"' if is_file else b""
        body += (b"\r\nContent-Type: " + ctype.encode() if ctype else b"") + b"\r\n\r\n" + data + b"\r\n"
    body += b"--b--" + epilogue
    body = body[:len(body) - cut] if cut < 8 else body
    if any(b"--b" in data for _, _, data, _ in parts):
        return  # a client never sends a boundary that occurs in its data
    split = split_multipart(body, "b", 1000, 500_000)
    if split is not None:
        assert split == _werkzeug_parts(body, "multipart/form-data; boundary=b")
    elif not preamble and cut in (0, 8) and not any(c and "8859" in c for *_, c in parts):
        raise AssertionError("a plain body must be split")


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "image/png",
                                          "application/x-www-form-urlencoded", None])
def test_other_content_types_are_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/predict", data=b'{"instances": []}', headers=headers)
    assert r.status_code == 415 and r.is_json and "multipart/form-data" in r.json["error"]


# ------------------------------------------------------------ dynamic batching under concurrency

def test_concurrent_requests_each_get_their_own_predictions(loaded_app, model_host, monkeypatch):
    """Many threads at once: requests are merged into shared model calls, yet every
    caller gets exactly its own ids, in order, with the labels of its own images.

    The model holds its first call until every other request of the first round is queued,
    so the next call merges five of them (MODEL_BATCH_MAX_IMAGES=16, 3 images each) however
    the threads are scheduled."""
    from tests.support import HANG_GUARD_S, eventually

    n_threads, per_request = 12, 3
    reference = model_host.model.predict(np.stack([image(1000 + i) for i in range(n_threads * per_request)]))
    start = threading.Barrier(n_threads)
    failures, answered = [], []
    real, call_sizes = model_host.batcher._run, []

    def model(images):
        call_sizes.append(len(images))
        if len(call_sizes) == 1:
            n_real = int(np.any(images.reshape(len(images), -1), axis=1).sum())  # not the blank padding
            everyone_else = n_threads * per_request - n_real
            assert eventually(lambda: model_host.batcher.queued_images() == everyone_else, HANG_GUARD_S, 0.01)
        return real(images)

    monkeypatch.setattr(model_host.batcher, "_run", model)

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
            answered.append(t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(HANG_GUARD_S)
    assert not failures, failures[:3]
    assert sorted(answered) == sorted(list(range(n_threads)) * 2)  # both rounds of every thread
    # five requests in one model call, padded to a size the worker warmed (inference.batcher)
    assert call_sizes[1] == padded_size(5 * per_request, 16) == 16, call_sizes
