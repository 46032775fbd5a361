"""HTTP endpoints of the inference service (see openapi.py for the contract)."""

from __future__ import annotations

import concurrent.futures
import hmac
import io
import json
import logging
import time
from typing import Any

import numpy as np
from flask import Blueprint, Flask, current_app, g, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from common.schema import IMAGE_SIZE, InvalidMessage, check_png_header, decode_image_b64
from common.settings import ServiceSettings, secret
from inference.batcher import Overloaded
from inference.engine import READY, Engine
from inference.openapi import openapi_document

log = logging.getLogger(__name__)

health = Blueprint("health", __name__)
v1 = Blueprint("v1", __name__, url_prefix="/v1")


class ApiError(Exception):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ------------------------------------------------------------ per-request resources

def get_engine() -> Engine:
    if "engine" not in g:
        g.engine = current_app.extensions["inference_engine"]
    return g.engine


def get_settings() -> ServiceSettings:
    return current_app.config["SETTINGS"]


def _stamp_request() -> None:
    g.received_at = time.time()
    g.t0 = time.perf_counter()


@v1.before_request
def _require_token() -> None:
    token = secret(get_settings().inference_token)
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="inference"'})


def _require_ready() -> Engine:
    engine = get_engine()
    if engine.state != READY:
        message = "model is loading" if engine.error is None else f"model failed to load: {engine.error}"
        raise ApiError(503, message, {"Retry-After": "1"})
    return engine


# ------------------------------------------------------------ health

@health.get("/healthz")
def healthz():
    return jsonify(status="ok")


@health.get("/readyz")
def readyz():
    engine = get_engine()
    if engine.state == READY:
        return jsonify(status="ready", model=engine.model.id)
    body: dict[str, Any] = {"status": engine.state}
    if engine.error:
        body["error"] = engine.error
    return jsonify(body), 503, {"Retry-After": "1"}


@health.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


# ------------------------------------------------------------ /v1

@v1.get("/model")
def model_info():
    engine = _require_ready()
    m = engine.model
    return jsonify(id=m.id, weights_source=m.weights_source, input_size=m.input_size,
                   classes=list(m.classes), untrained=m.untrained, max_batch=get_settings().max_batch,
                   dynamic_batch_max=engine.batcher.max_batch,
                   dynamic_batch_delay_ms=engine.batcher.max_delay_s * 1000.0)


def _parse_instances(max_batch: int) -> list:
    raw = request.get_data(cache=False)  # 413 from Werkzeug if over MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object with an 'instances' list")
    if "instances" not in body:
        raise ApiError(400, "missing field 'instances'")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ApiError(400, "field 'instances' must be a list")
    if not instances:
        raise ApiError(400, "field 'instances' is empty")
    if len(instances) > max_batch:
        raise ApiError(400, f"{len(instances)} instances, over the limit of {max_batch} (MAX_BATCH)")
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise ApiError(400, f"instances[{i}] is not an object")
    return instances


def decode_instance(inst: dict) -> np.ndarray:
    """A 32x32x3 uint8 array, or InvalidMessage with the reason."""
    image_id = inst.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise InvalidMessage("field 'image_id' must be a non-empty string")
    png = decode_image_b64(inst.get("image"))
    check_png_header(png)  # cheap: signature, 32x32, 8-bit RGB, before any pixel work
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
            img.load()
            if img.mode != "RGB" or img.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise InvalidMessage(f"image is {img.mode} {img.size[0]}x{img.size[1]}, expected RGB 32x32")
            return np.asarray(img, dtype=np.uint8)
    except InvalidMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data
        raise InvalidMessage(f"corrupt PNG data ({type(exc).__name__})") from None


@v1.post("/predict")
def predict():
    settings = get_settings()
    engine = _require_ready()
    instances = _parse_instances(settings.max_batch)

    decode_start = time.perf_counter()
    predictions: list[dict | None] = [None] * len(instances)
    arrays, slots = [], []
    for i, inst in enumerate(instances):
        try:
            arrays.append(decode_instance(inst))
            slots.append(i)
        except InvalidMessage as exc:
            image_id = inst.get("image_id")
            predictions[i] = {"image_id": image_id if isinstance(image_id, str) else None,
                              "error": exc.reason}
    decode_ms = (time.perf_counter() - decode_start) * 1000.0

    infer_start = time.perf_counter()
    if arrays:
        try:
            futures = engine.batcher.submit(np.stack(arrays))
        except Overloaded as exc:
            raise ApiError(503, f"overloaded: {exc}", {"Retry-After": "1"}) from None
        deadline = time.monotonic() + settings.inference_request_timeout_s
        try:
            results = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except concurrent.futures.TimeoutError:
            raise ApiError(503, "inference timed out", {"Retry-After": "1"}) from None
        except Exception as exc:  # the model call itself failed: a server fault, not the client's
            log.error("inference failed: %s", exc)
            raise ApiError(503, f"inference failed: {type(exc).__name__}", {"Retry-After": "1"}) from None
        classes = engine.model.classes
        rows = iter(slots)
        for res in results:
            probs = np.nan_to_num(res.probs.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            best = probs.argmax(axis=1)
            for r in range(len(probs)):
                i = next(rows)
                predictions[i] = {
                    "image_id": instances[i]["image_id"],
                    "label": classes[int(best[r])],
                    "confidence": float(min(1.0, max(0.0, probs[r, best[r]]))),
                    "received_at": g.received_at,
                    "inferred_at": res.inferred_at,
                    "inference_ms": round(res.inference_ms, 3),
                }
    inference_ms = (time.perf_counter() - infer_start) * 1000.0

    return jsonify(
        model=engine.model.id,
        predictions=predictions,
        batch_size=len(instances),
        timing={"decode_ms": round(decode_ms, 3), "inference_ms": round(inference_ms, 3),
                "total_ms": round((time.perf_counter() - g.t0) * 1000.0, 3)},
    )


# ------------------------------------------------------------ errors: always JSON

def _api_error(exc: ApiError):
    return jsonify(error=exc.message), exc.status, exc.headers


def _http_error(exc: HTTPException):
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return jsonify(error=exc.description or exc.name), exc.code or 500, headers


def _unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return jsonify(error="internal server error"), 500


def init_app(app: Flask) -> None:
    app.before_request(_stamp_request)
    app.register_blueprint(health)
    app.register_blueprint(v1)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
