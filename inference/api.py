"""HTTP endpoints of the inference service (see openapi.py for the contract)."""

from __future__ import annotations

import concurrent.futures
import hmac
import io
import logging
import time

import numpy as np
from flask import Blueprint, Flask, current_app, g, jsonify, request
from PIL import Image
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from common.models import (Error, Health, Instance, InstanceError, ModelInfo, NotReady, Prediction,
                           PredictResponse, Ready, Timing, predict_request_model, reason_of)
from common.schema import IMAGE_SIZE, InvalidMessage
from common.settings import ServiceSettings, secret
from inference.batcher import Overloaded
from inference.engine import READY, Engine
from inference.metrics import exposition
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


def _count_request(response):
    """after_request (error handlers' answers included): requests by route and status."""
    t0 = g.get("t0")
    if t0 is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        current_app.extensions["inference_metrics"].request(rule, response.status_code,
                                                            time.perf_counter() - t0)
    return response


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

def _json(body, **dump):
    """A response model as the JSON response (the models are the OpenAPI document's schemas)."""
    return jsonify(body.model_dump(mode="json", **dump))


@health.get("/healthz")
def healthz():
    return _json(Health(status="ok"))


@health.get("/readyz")
def readyz():
    engine = get_engine()
    if engine.state == READY:
        return _json(Ready(status="ready", model=engine.model.id))
    # The failure's detail (paths, exception text) goes to the service's log, not to an
    # unauthenticated endpoint.
    body = NotReady(status=engine.state,
                    error="model loading failed; see the service's log" if engine.error else None)
    return _json(body, exclude_none=True), 503, {"Retry-After": "1"}


@health.get("/metrics")
def metrics():
    """Prometheus exposition (every Gunicorn worker's metrics, inference/metrics.py)."""
    body, content_type = exposition()
    return body, 200, {"Content-Type": content_type}


@health.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(get_settings().max_request_images))


# ------------------------------------------------------------ /v1

@v1.get("/model")
def model_info():
    engine = _require_ready()
    m = engine.model
    return _json(ModelInfo(id=m.id, weights_source=m.weights_source, input_size=m.input_size,
                           classes=list(m.classes), untrained=m.untrained,
                           weights_sha256=m.weights_sha256,
                           max_request_images=get_settings().max_request_images,
                           model_batch_max_images=engine.batcher.max_batch,
                           model_batch_delay_ms=engine.batcher.max_delay_s * 1000.0))


def _request_error(exc: ValidationError, max_batch: int) -> str:
    """The 400 message for a body that is not a PredictRequest (the first problem found)."""
    err = exc.errors(include_url=False)[0]
    typ, loc = err["type"], err["loc"]
    if typ == "json_invalid":  # jiter: also non-UTF-8, lone surrogates, nesting over 200 levels
        return f"body is not valid JSON: {str((err.get('ctx') or {}).get('error', ''))[:200]}"
    if not loc:
        return "body must be a JSON object with an 'instances' list"
    if loc == ("instances",):
        if typ == "too_long":
            return f"{len(err['input'])} instances, over the limit of {max_batch} (MAX_REQUEST_IMAGES)"
        return {"missing": "missing field 'instances'",
                "list_type": "field 'instances' must be a list",
                "too_short": "field 'instances' is empty"}.get(typ, f"field 'instances': {err['msg']}")
    if len(loc) == 2 and typ == "dict_type":
        return f"instances[{loc[1]}] is not an object"
    return reason_of(exc, predict_request_model(max_batch))


def _parse_instances(max_batch: int) -> list[dict]:
    raw = request.get_data(cache=False)  # 413 from Werkzeug if over MAX_CONTENT_LENGTH
    try:
        body = predict_request_model(max_batch).model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, _request_error(exc, max_batch)) from None
    return body.instances


def decode_instance(inst: dict) -> np.ndarray:
    """A 32x32x3 uint8 array, or InvalidMessage with the reason."""
    try:
        # image_id, then base64 and the cheap PNG header check, before any pixel work
        png = Instance.model_validate(inst).png
    except ValidationError as exc:
        raise InvalidMessage(reason_of(exc, Instance)) from None
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
    """Classify ``instances``.  Guarantee (the inference consumer relies on it): the
    answer holds exactly one entry per instance, in the order of the instances:
    ``predictions[i]`` answers ``instances[i]``, a Prediction or, for an image that
    cannot be decoded, an InstanceError.  Image ids are echoed, never used to match:
    two instances may carry the same id and still get their own answers."""
    settings = get_settings()
    engine = _require_ready()
    instances = _parse_instances(settings.max_request_images)

    decode_start = time.perf_counter()
    predictions: list[Prediction | InstanceError | None] = [None] * len(instances)
    arrays, slots = [], []
    for i, inst in enumerate(instances):
        try:
            arrays.append(decode_instance(inst))
            slots.append(i)
        except InvalidMessage as exc:
            image_id = inst.get("image_id")
            predictions[i] = InstanceError(image_id=image_id if isinstance(image_id, str) else None,
                                           error=exc.reason)
    decode_ms = (time.perf_counter() - decode_start) * 1000.0

    infer_start = time.perf_counter()
    if arrays:
        # INFERENCE_REQUEST_TIMEOUT_S, shorter than the client's timeout (common/settings.py):
        # the service gives up first, and what it gave up on is never run (below).
        deadline = time.monotonic() + settings.inference_request_timeout_s
        try:
            futures = engine.batcher.submit(np.stack(arrays), deadline=deadline)
        except Overloaded as exc:
            raise ApiError(503, f"overloaded: {exc}", {"Retry-After": "1"}) from None
        try:
            results = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            # CancelledError: the batcher dropped a chunk at the deadline before we woke up.
            raise ApiError(503, "inference timed out", {"Retry-After": "1"}) from None
        except Exception as exc:  # the model call itself failed: a server fault, not the client's
            log.error("inference failed: %s", exc)
            raise ApiError(503, f"inference failed: {type(exc).__name__}", {"Retry-After": "1"}) from None
        finally:
            # Nobody waits for the chunks not run yet (after a timeout or a failure): cancel
            # them, so that they leave the batcher's queue and never reach the model.  No-op
            # for the futures already done.
            for f in futures:
                f.cancel()
        classes = engine.model.classes
        rows = iter(slots)
        for res in results:
            probs = np.nan_to_num(res.probs.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            best = probs.argmax(axis=1)
            for r in range(len(probs)):
                i = next(rows)
                predictions[i] = Prediction(
                    image_id=instances[i]["image_id"],
                    label=classes[int(best[r])],
                    confidence=float(min(1.0, max(0.0, probs[r, best[r]]))),
                    received_at=g.received_at,
                    inferred_at=res.inferred_at,
                    inference_ms=round(res.inference_ms, 3),
                )
    inference_ms = (time.perf_counter() - infer_start) * 1000.0
    current_app.extensions["inference_metrics"].predicted_images(len(arrays), len(instances) - len(arrays))

    return _json(PredictResponse(
        model=engine.model.id,
        predictions=predictions,
        batch_size=len(instances),
        timing=Timing(decode_ms=round(decode_ms, 3), inference_ms=round(inference_ms, 3),
                      total_ms=round((time.perf_counter() - g.t0) * 1000.0, 3)),
    ))


# ------------------------------------------------------------ errors: always JSON

def _api_error(exc: ApiError):
    return _json(Error(error=exc.message)), exc.status, exc.headers


def _http_error(exc: HTTPException):
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return _json(Error(error=exc.description or exc.name)), exc.code or 500, headers


def _unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _json(Error(error="internal server error")), 500


def init_app(app: Flask) -> None:
    app.before_request(_stamp_request)
    app.after_request(_count_request)
    app.register_blueprint(health)
    app.register_blueprint(v1)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
