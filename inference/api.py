"""HTTP endpoints of the inference service (see openapi.py for the contract) and the
decoding of each image; the request body is read by request_body.py."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hmac
import io
import logging
import time
import warnings

import numpy as np
from flask import Blueprint, Flask, Request, current_app, g, jsonify, request
from PIL import Image
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from common.http_models import (Error, Health, InstanceError, ModelInfo, NotReady, Prediction, PredictResponse, Ready,
                                Timing, instance_model)
from common.models import reason_of
from common.schema import InvalidMessage
from common.wire import CONTENT_TYPES, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, IMAGE_FORMATS, IMAGE_SIZE
from common.settings import ServiceSettings, secret
from inference.batcher import Overloaded
from inference.metrics import exposition
from inference.openapi import openapi_document
from inference.request_body import ImagePart, instance_id, parse_instances, parse_parts
from inference.serving import READY, ModelHost

log = logging.getLogger(__name__)

# PIL's own decompression-bomb guard (a warning over Image.MAX_IMAGE_PIXELS, an error over
# twice that, raised by Image.open before the size can even be read) is replaced by the
# service's: MAX_IMAGE_PIXELS, checked from the header before any pixel is decoded, answered
# per image (decode_image).  Neither PIL's error nor its warning can escape a request.
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

PIL_FORMATS = tuple(f.upper() for f in IMAGE_FORMATS)  # PIL's names of the contract's formats
IMAGE_CONTENT_TYPES = tuple(CONTENT_TYPES.values())

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


def _require_ready() -> ModelHost:
    model_host = get_model_host()
    if model_host.state != READY:
        message = ("model is loading" if model_host.error is None
                   else f"model failed to load: {model_host.error}")
        raise ApiError(503, message, {"Retry-After": "1"})
    return model_host


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
    return _json(body, exclude_none=True), 503, {"Retry-After": "1"}


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
    model_host = _require_ready()
    m = model_host.model
    return _json(ModelInfo(id=m.id, weights_source=m.weights_source, input_size=m.input_size,
                           classes=list(m.classes), untrained=m.untrained,
                           weights_sha256=m.weights_sha256,
                           max_request_images=get_settings().max_request_images,
                           model_batch_max_images=model_host.batcher.max_batch,
                           model_batch_delay_ms=model_host.batcher.max_delay_s * 1000.0))


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What one image may be: ``size`` is the model's input size (images are resized to it)."""

    size: int = IMAGE_SIZE
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A PNG or JPEG as a ``size`` x ``size`` x 3 uint8 array (converted to RGB, resized when
    it is another size), or InvalidMessage with the reason.  The pixel count is read from the
    header and refused before anything is decoded: a decompression bomb costs nothing."""
    if len(data) > limits.max_bytes:
        raise InvalidMessage(f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,} "
                             "(MAX_IMAGE_BYTES)")
    size = limits.size
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:  # lazy: the header only
            width, height = img.size
            if width * height > limits.max_pixels:
                raise InvalidMessage(f"image is {width}x{height} ({width * height:,} pixels), over the "
                                     f"limit of {limits.max_pixels:,} (MAX_IMAGE_PIXELS)")
            if (width, height) != (size, size) and img.format == "JPEG":
                # libjpeg's DCT scaling: decode at 1/2, 1/4 or 1/8 where that still covers size
                img.draft("RGB", (size, size))
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")  # greyscale, palette, RGBA (alpha dropped), CMYK ...
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            return np.asarray(img, dtype=np.uint8)
    except InvalidMessage:
        raise
    except Image.UnidentifiedImageError:
        raise InvalidMessage("image is not a PNG or JPEG") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data
        raise InvalidMessage(f"corrupt image data ({type(exc).__name__})") from None


def decode_instance(inst: dict, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A JSON instance's image as a size x size x 3 uint8 array, or InvalidMessage with the reason."""
    model = instance_model(limits.max_bytes)
    try:
        # image_id, then the base64 text's length and the base64 itself, before any pixel work
        data = model.model_validate(inst).data
    except ValidationError as exc:
        raise InvalidMessage(reason_of(exc, model)) from None
    return decode_image(data, limits)


def decode_part(part: ImagePart, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A multipart image part as a size x size x 3 uint8 array, or InvalidMessage with the reason."""
    if not part.image_id:
        raise InvalidMessage("field 'image_id' must be a non-empty string")
    if part.content_type not in IMAGE_CONTENT_TYPES:
        raise InvalidMessage(f"image part has content type {part.content_type or '(none)'!r}, expected "
                             "image/png or image/jpeg")
    return decode_image(part.data, limits)


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
    limits = ImageLimits(model_host.model.input_size, settings.max_image_bytes, settings.max_image_pixels)
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

    decode_start = time.perf_counter()
    predictions: list[Prediction | InstanceError | None] = [None] * len(ids)
    arrays, slots = [], []
    for i, decode in enumerate(decoders):
        try:
            arrays.append(decode())
            slots.append(i)
        except InvalidMessage as exc:
            predictions[i] = InstanceError(image_id=ids[i], error=exc.reason)
    decode_ms = (time.perf_counter() - decode_start) * 1000.0

    infer_start = time.perf_counter()
    if arrays:
        # INFERENCE_REQUEST_TIMEOUT_S, shorter than the client's timeout (common/settings.py):
        # the service gives up first, and what it gave up on is never run (below).
        deadline = time.monotonic() + settings.inference_request_timeout_s
        try:
            futures = model_host.batcher.submit(np.stack(arrays), deadline=deadline)
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
        classes = model_host.model.classes
        rows = iter(slots)
        for res in results:
            probs = np.nan_to_num(res.probs.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            best = probs.argmax(axis=1)
            for r in range(len(probs)):
                i = next(rows)
                predictions[i] = Prediction(
                    image_id=ids[i],
                    label=classes[int(best[r])],
                    confidence=float(min(1.0, max(0.0, probs[r, best[r]]))),
                    received_at=g.received_at,
                    inferred_at=res.inferred_at,
                    inference_ms=round(res.inference_ms, 3),
                )
    inference_ms = (time.perf_counter() - infer_start) * 1000.0
    current_app.extensions["inference_metrics"].predicted_images(len(arrays), len(ids) - len(arrays))

    return _json(PredictResponse(
        model=model_host.model.id,
        predictions=predictions,
        batch_size=len(ids),
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
