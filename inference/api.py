"""HTTP endpoints of the inference service (see openapi.py for the contract)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hmac
import io
import logging
import sys
import time
import warnings
from typing import NamedTuple

import numpy as np
from flask import Blueprint, Flask, Request, current_app, g, jsonify, request
from PIL import Image
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import parse_options_header

from common.http_models import (Error, Health, InstanceError, ModelInfo, NotReady, Prediction, PredictResponse, Ready,
                                Timing, instance_model, predict_request_model)
from common.models import reason_of
from common.schema import InvalidMessage
from common.wire import CONTENT_TYPES, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, IMAGE_FORMATS, IMAGE_SIZE
from common.settings import ServiceSettings, secret
from inference.batcher import Overloaded
from inference.metrics import exposition
from inference.openapi import openapi_document
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


def _parse_instances(max_batch: int, max_image_bytes: int) -> list[dict]:
    raw = request.get_data(cache=False)  # 413 from Werkzeug if over MAX_CONTENT_LENGTH
    try:
        body = predict_request_model(max_batch, max_image_bytes).model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, _request_error(exc, max_batch)) from None
    return body.instances


class ImagePart(NamedTuple):
    image_id: str
    data: bytes
    content_type: str  # the part's media type, lower case, parameters dropped ("" if none)


def _split_multipart(body: bytes, boundary: str, max_parts: int,
                     max_text: int) -> tuple[list[str], list[tuple[bytes, str]]] | None:
    """The 'image_id' text parts and 'image' file parts (data, media type) of a multipart body
    in its plain form (what clients write: no preamble, CRLF line ends, headers in every
    part), by finding its delimiters: a fraction of Werkzeug's general parser's time (64
    32x32 PNGs: 140 -> 75 us per image for the whole request, bench/decode_cost.py).
    None for any other form: Werkzeug parses it then.  Werkzeug's
    rules: a part is a file when its Content-Disposition has a filename; 413 over
    ``max_parts`` parts or a text part over ``max_text`` bytes."""
    opening = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + opening
    if not body.startswith(opening):
        return None
    ids, files = [], []
    pos, parts = len(opening), 0
    while not body.startswith(b"--", pos):  # the closing delimiter (the epilogue is ignored)
        end = body.find(delimiter, pos)
        if end < 0 or not body.startswith(b"\r\n", pos):
            return None
        head_end = body.find(b"\r\n\r\n", pos, end)
        if head_end < 0:
            return None
        parts += 1
        if parts > max_parts:
            raise RequestEntityTooLarge()
        head, data = body[pos + 2:head_end], body[head_end + 4:end]
        pos = end + len(delimiter)
        disposition, content_type, charset = None, "", ""
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                return None
            name = name.strip().lower()
            if name == b"content-disposition":
                disposition = parse_options_header(value.decode("utf-8", "replace").strip())
            elif name == b"content-type":
                content_type, params = parse_options_header(value.decode("utf-8", "replace").strip())
                content_type, charset = content_type.lower(), params.get("charset", "").lower()
        if disposition is None or disposition[0].lower() != "form-data" or charset not in ("", "utf-8"):
            return None  # (a text part in another charset: Werkzeug decodes it)
        field, is_file = disposition[1].get("name"), "filename" in disposition[1]
        if not is_file and len(data) > max_text:
            raise RequestEntityTooLarge()
        if field == "image_id" and not is_file:
            ids.append(data.decode("utf-8", "replace"))
        elif field == "image" and is_file:
            files.append((data, content_type))
    return ids, files


def _parse_parts(max_batch: int) -> list[ImagePart]:
    """The (image_id, image file) pairs of a multipart/form-data body, in order.  413 for a
    body over MAX_CONTENT_LENGTH, more parts than MAX_FORM_PARTS or a text part over
    MAX_FORM_MEMORY_SIZE; a body that cannot be parsed holds no parts (400 below)."""
    boundary = request.mimetype_params.get("boundary")
    split = None
    if boundary:
        max_parts, max_text = request.max_form_parts, request.max_form_memory_size
        split = _split_multipart(request.get_data(cache=True), boundary,
                                 sys.maxsize if max_parts is None else max_parts,
                                 sys.maxsize if max_text is None else max_text)
    if split is not None:
        ids, files = split
    else:  # Werkzeug's parser (it reads the cached body when the split gave up)
        ids = request.form.getlist("image_id")
        files = [(f.read(), f.mimetype) for f in request.files.getlist("image")]
    if not ids and not files:
        raise ApiError(400, "no images: a multipart/form-data body needs, per image, an 'image_id' "
                            "text part and an 'image' file part")
    if len(ids) != len(files):
        raise ApiError(400, f"{len(ids)} 'image_id' parts and {len(files)} 'image' file parts: each image "
                            "needs one of each (an 'image' part is a file: a filename in its "
                            "Content-Disposition)")
    if len(ids) > max_batch:
        raise ApiError(400, f"{len(ids)} images, over the limit of {max_batch} (MAX_REQUEST_IMAGES)")
    return [ImagePart(i, data, ctype) for i, (data, ctype) in zip(ids, files)]


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


def _instance_id(inst: dict) -> str | None:
    image_id = inst.get("image_id")
    return image_id if isinstance(image_id, str) else None


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
        parts = _parse_parts(settings.max_request_images)
        ids = [p.image_id for p in parts]
        decoders = [lambda p=p: decode_part(p, limits) for p in parts]
    elif mimetype == "application/json":
        instances = _parse_instances(settings.max_request_images, settings.max_image_bytes)
        ids = [_instance_id(inst) for inst in instances]
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
