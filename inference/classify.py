"""The service's work on one request, without HTTP: decode each image (a per-image
``InstanceError`` for one that cannot be), run the rest through the model host's dynamic
batcher under the request's deadline, and answer a ``PredictResponse`` with one entry per
image, in order.  A request that cannot be answered raises :class:`ClassifyError` with the
HTTP status it maps to.

Two callers: the ``/v1/predict`` route (inference/api.py, which parses the HTTP body first)
and ``INFERENCE_MODE=embedded``'s client in the inference consumer (consumers/embedded.py,
through :func:`classify_items`).  Nothing here imports Flask, Werkzeug or a model runtime.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
import time
import warnings
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from pydantic import ValidationError

from common.http_models import InstanceError, ModelInfo, Prediction, PredictResponse, Timing, instance_model
from common.models import reason_of
from common.schema import InvalidMessage
from common.settings import ServiceSettings, request_bytes_limit
from common.wire import CONTENT_TYPES, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, IMAGE_FORMATS, IMAGE_SIZE
from inference.batcher import Overloaded
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


RETRY_AFTER_S = 1  # what a transient refusal tells the client to wait (HTTP Retry-After)


class ClassifyError(Exception):
    """The request cannot be answered: ``status`` is the HTTP status it maps to (503: the
    model is not ready, overloaded, timed out or failed, transient; 400/413: the request
    breaks a limit and can never pass)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    @property
    def transient(self) -> bool:
        return self.status == 503

    @property
    def retry_after_s(self) -> int | None:
        """When to ask again: RETRY_AFTER_S for a transient refusal, None otherwise."""
        return RETRY_AFTER_S if self.transient else None


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


def decode_file(image_id: str | None, data: bytes, content_type: str,
                limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An (image_id, image bytes, content type) image as a size x size x 3 uint8 array, or
    InvalidMessage with the reason."""
    if not image_id:
        raise InvalidMessage("field 'image_id' must be a non-empty string")
    if content_type not in IMAGE_CONTENT_TYPES:
        raise InvalidMessage(f"image part has content type {content_type or '(none)'!r}, expected "
                             "image/png or image/jpeg")
    return decode_image(data, limits)


def require_ready(model_host: ModelHost) -> ModelHost:
    """The host, or ClassifyError 503 while its model loads (or after it failed to)."""
    if model_host.state != READY:
        raise ClassifyError(503, "model is loading" if model_host.error is None
                            else f"model failed to load: {model_host.error}")
    return model_host


def model_info(model_host: ModelHost, settings: ServiceSettings) -> ModelInfo:
    """What ``/v1/model`` answers: the loaded model, the request limit and the dynamic
    batcher's settings (ClassifyError 503 while the model is not ready)."""
    m = require_ready(model_host).model
    return ModelInfo(id=m.id, weights_source=m.weights_source, input_size=m.input_size,
                     classes=list(m.classes), untrained=m.untrained, weights_sha256=m.weights_sha256,
                     max_request_images=settings.max_request_images,
                     model_batch_max_images=model_host.batcher.max_batch,
                     model_batch_delay_ms=model_host.batcher.max_delay_s * 1000.0)


def image_limits(model_host: ModelHost, settings: ServiceSettings) -> ImageLimits:
    return ImageLimits(model_host.model.input_size, settings.max_image_bytes, settings.max_image_pixels)


def classify(model_host: ModelHost, settings: ServiceSettings, ids: Sequence[str | None],
             decoders: Sequence[Callable[[], np.ndarray]], metrics=None, received_at: float | None = None,
             t0: float | None = None) -> PredictResponse:
    """Classify the images of one request, ``decoders[i]`` decoding image ``ids[i]``:
    ``predictions[i]`` answers it, a Prediction or, for an image that cannot be decoded, an
    InstanceError.  Ids are echoed, never used to match.  ``metrics``: an
    inference.metrics.ServiceMetrics (images by outcome); ``received_at`` (epoch) and ``t0``
    (perf_counter) when the request arrived (now by default).  ClassifyError 503 when the
    model is not ready, overloaded, past the deadline (INFERENCE_REQUEST_TIMEOUT_S) or failed."""
    t0 = time.perf_counter() if t0 is None else t0
    received_at = time.time() if received_at is None else received_at
    require_ready(model_host)
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
            raise ClassifyError(503, f"overloaded: {exc}") from None
        try:
            results = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            # CancelledError: the batcher dropped a chunk at the deadline before we woke up.
            raise ClassifyError(503, "inference timed out") from None
        except Exception as exc:  # the model call itself failed: a server fault, not the client's
            log.error("inference failed: %s", exc)
            raise ClassifyError(503, f"inference failed: {type(exc).__name__}") from None
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
                    received_at=received_at,
                    inferred_at=res.inferred_at,
                    inference_ms=round(res.inference_ms, 3),
                )
    inference_ms = (time.perf_counter() - infer_start) * 1000.0
    if metrics is not None:
        metrics.predicted_images(len(arrays), len(ids) - len(arrays))

    return PredictResponse(
        model=model_host.model.id,
        predictions=predictions,
        batch_size=len(ids),
        timing=Timing(decode_ms=round(decode_ms, 3), inference_ms=round(inference_ms, 3),
                      total_ms=round((time.perf_counter() - t0) * 1000.0, 3)),
    )


def classify_items(model_host: ModelHost, settings: ServiceSettings, items: Sequence[tuple[str, bytes, str]],
                   metrics=None) -> PredictResponse:
    """:func:`classify` for (image_id, image bytes, content type) triples, with the request
    limits the HTTP body has over HTTP: ClassifyError 400 for no images or more than
    MAX_REQUEST_IMAGES, 413 when the images and ids alone are over the body limit
    (MAX_REQUEST_BYTES or its default; a lower bound of the multipart body's size, so
    nothing refused here would have passed over HTTP)."""
    t0, received_at = time.perf_counter(), time.time()
    require_ready(model_host)
    if not items:
        raise ClassifyError(400, "no images")
    if len(items) > settings.max_request_images:
        raise ClassifyError(400, f"{len(items)} images, over the limit of {settings.max_request_images} "
                                 "(MAX_REQUEST_IMAGES)")
    size = sum(len(data) + len(image_id.encode("utf-8", "replace")) for image_id, data, _ in items)
    if size > request_bytes_limit(settings):
        raise ClassifyError(413, f"{size:,} bytes of images, over the request limit of "
                                 f"{request_bytes_limit(settings):,} (MAX_REQUEST_BYTES)")
    limits = image_limits(model_host, settings)
    return classify(model_host, settings, [image_id for image_id, _, _ in items],
                    [lambda it=it: decode_file(*it, limits) for it in items],
                    metrics=metrics, received_at=received_at, t0=t0)
