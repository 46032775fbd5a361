"""HTTP endpoints of the inference service (see openapi.py for the contract); the request
body is read by request_body.py, its images decoded and classified by classify.py."""

from __future__ import annotations

import hmac
import io
import logging
import time

import numpy as np
from flask import Blueprint, Flask, Request, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from common.http_models import Error, Health, NotReady, Ready
from common.settings import ServiceSettings, secret
from inference.classify import (DEFAULT_LIMITS, RETRY_AFTER_S, ClassifyError, ImageLimits, classify, decode_file, decode_instance,
                                image_limits, require_ready)
from inference.classify import model_info as describe_model
from inference.classify import decode_image  # noqa: F401 - inference.api.decode_image, as the benches name it
from inference.metrics import exposition
from inference.openapi import openapi_document
from inference.request_body import ImagePart, instance_id, parse_instances, parse_parts
from inference.serving import READY, ModelHost

log = logging.getLogger(__name__)

health = Blueprint("health", __name__)
v1 = Blueprint("v1", __name__, url_prefix="/v1")


class ApiError(Exception):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ------------------------------------------------------------ per-request resources

def get_model_host() -> ModelHost:
    if "model_host" not in g:
        g.model_host = current_app.extensions["model_host"]
    return g.model_host


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


def _api_error_of(exc: ClassifyError) -> ApiError:
    return ApiError(exc.status, exc.message,
                    {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None)


def _require_ready() -> ModelHost:
    try:
        return require_ready(get_model_host())
    except ClassifyError as exc:
        raise _api_error_of(exc) from None


# ------------------------------------------------------------ health

def _json(body, **dump):
    """A response model as the JSON response (the models are the OpenAPI document's schemas)."""
    return jsonify(body.model_dump(mode="json", **dump))


@health.get("/healthz")
def healthz():
    return _json(Health(status="ok"))


@health.get("/readyz")
def readyz():
    model_host = get_model_host()
    if model_host.state == READY:
        return _json(Ready(status="ready", model=model_host.model.id))
    # The failure's detail (paths, exception text) goes to the service's log, not to an
    # unauthenticated endpoint.
    body = NotReady(status=model_host.state,
                    error="model loading failed; see the service's log" if model_host.error else None)
    return _json(body, exclude_none=True), 503, {"Retry-After": str(RETRY_AFTER_S)}


@health.get("/metrics")
def metrics():
    """Prometheus exposition (every Gunicorn worker's metrics, inference/metrics.py)."""
    body, content_type = exposition()
    return body, 200, {"Content-Type": content_type}


@health.get("/openapi.json")
def openapi():
    s = get_settings()
    return jsonify(openapi_document(s.max_request_images, s.max_image_bytes))


# ------------------------------------------------------------ /v1

@v1.get("/model")
def model_info():
    return _json(describe_model(_require_ready(), get_settings()))


def decode_part(part: ImagePart, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A multipart image part as a size x size x 3 uint8 array, or InvalidMessage with the reason."""
    return decode_file(part.image_id, part.data, part.content_type, limits)


@v1.post("/predict")
def predict():
    """Classify ``instances`` (application/json) or the (image_id, image) part pairs
    (multipart/form-data).  Guarantee (the inference consumer relies on it): the
    answer holds exactly one entry per image, in the order of the request:
    ``predictions[i]`` answers ``instances[i]`` (the i-th pair), a Prediction or, for an
    image that cannot be decoded, an InstanceError.  Image ids are echoed, never used to match:
    two instances may carry the same id and still get their own answers."""
    settings = get_settings()
    model_host = _require_ready()
    limits = image_limits(model_host, settings)
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        parts = parse_parts(settings.max_request_images)
        ids = [p.image_id for p in parts]
        decoders = [lambda p=p: decode_part(p, limits) for p in parts]
    elif mimetype == "application/json":
        instances = parse_instances(settings.max_request_images, settings.max_image_bytes)
        ids = [instance_id(inst) for inst in instances]
        decoders = [lambda inst=inst: decode_instance(inst, limits) for inst in instances]
    else:
        raise ApiError(415, f"unsupported content type {request.content_type or '(none)'!r}: "
                            "send application/json or multipart/form-data")
    try:
        return _json(classify(model_host, settings, ids, decoders, current_app.extensions["inference_metrics"],
                              received_at=g.received_at, t0=g.t0))
    except ClassifyError as exc:
        raise _api_error_of(exc) from None


# ------------------------------------------------------------ errors: always JSON

def _api_error(exc: ApiError):
    return _json(Error(error=exc.message)), exc.status, exc.headers


def _http_error(exc: HTTPException):
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return _json(Error(error=exc.description or exc.name)), exc.code or 500, headers


def _unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _json(Error(error="internal server error")), 500


class ServiceRequest(Request):
    """Multipart file parts are kept in memory (the body is at most MAX_CONTENT_LENGTH),
    never spooled to temporary files."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def init_app(app: Flask) -> None:
    app.request_class = ServiceRequest
    app.before_request(_stamp_request)
    app.after_request(_count_request)
    app.register_blueprint(health)
    app.register_blueprint(v1)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
