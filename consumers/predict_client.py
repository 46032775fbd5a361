"""The inference service's HTTP client: ``/v1/predict`` batches as multipart requests, the
start-up limit check (``/v1/model``), and the failure policy by cause (docs/ARCHITECTURE.md,
"The inference consumer's failure policy"): :class:`ServiceUnavailable` is transient,
:class:`BatchRejected` (400/413) means the request itself can never pass."""

from __future__ import annotations

import itertools
import logging
import secrets

from common.lifecycle import Backoff, soonest
from common.http_models import ModelInfo, PredictResponse
from common.settings import InferenceClientSettings, secret
from common.wire import CONTENT_TYPES, FILE_SUFFIXES, IMAGE_FORMATS

log = logging.getLogger("consumers.inference")


# The failure policy, by cause (docs/ARCHITECTURE.md, "The inference consumer's failure
# policy").  An image is dead-lettered only for what the service says about *it*; the
# state of the service, or of whatever stands in front of it, never costs an image.
# Transient (keep the batch, back off, never commit, never dead-letter): no answer
# (connection error, timeout), 5xx, 429, and 401/403/404/408 (a token rotation that
# restarts the service before the consumers, a proxy whose route is not up yet); any
# other unexpected status too, for the same reason.  400/413: the service refused the
# whole request, so the batch is split until the image it refuses is alone.
TRANSIENT_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not found", 408: "request timeout",
                    429: "too many requests"}
REFUSED_STATUS = (400, 413)


class ServiceUnavailable(RuntimeError):
    """The service cannot answer this request now: keep the batch, back off, retry.

    ``cause`` says why in a few words (``Stats.retries_by_cause`` counts by it), ``status``
    is the HTTP status (None when no response came); ``retry_after_s``: the response's
    Retry-After in seconds (the service sends 1 while its model loads), None without one."""

    def __init__(self, cause: str, status: int | None = None, url: str = "", detail: str = "",
                 retry_after_s: float | None = None):
        where = f"HTTP {status} from {url}" if status is not None else url
        super().__init__(cause + (f" ({where})" if where else "") + (f": {detail}" if detail else ""))
        self.cause, self.status, self.url, self.detail = cause, status, url, detail
        self.retry_after_s = retry_after_s


def retry_after(resp) -> float | None:
    """A response's Retry-After in seconds (RFC 9110's delay-seconds form; an HTTP date or
    anything else: None, and the caller's own backoff decides)."""
    value = (resp.headers.get("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None


class BatchRejected(RuntimeError):
    """The service refused the whole request (400/413): the same request can never pass.
    The consumer splits the batch until the image it refuses is alone; ``reason`` is the
    service's own words."""

    def __init__(self, status: int, url: str, reason: str):
        super().__init__(f"HTTP {status} from {url}: {reason}")
        self.status, self.url, self.reason = status, url, reason


def _snippet(resp, limit: int = 300) -> str:
    return resp.text[:limit].strip() or "(empty body)"


def _service_error(resp) -> str | None:
    """The ``error`` of the service's JSON error body; None for any other body (a proxy's page)."""
    try:
        body = resp.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error[:1000] if isinstance(error, str) else None


def _first_problems(exc) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                     for e in exc.errors(include_url=False)[:2])[:300]


# The file part of each image: its content type and the suffix of its (nominal) file name.
IMAGE_CONTENT_TYPES = {CONTENT_TYPES[f]: FILE_SUFFIXES[f][0].encode() for f in IMAGE_FORMATS}


def encode_multipart(items: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """The multipart/form-data body of /v1/predict for (image_id, image bytes, content type)
    triples, and its Content-Type: per image, in order, an ``image_id`` text part then an
    ``image`` file part.  Built by hand (one join; about 10x cheaper than urllib3's
    encode_multipart_formdata for 64 images of 3 KB, bench/decode_cost.py) with a random
    boundary that occurs in no image and no id.  ValueError for a content type other than
    image/png or image/jpeg, or an id that is not valid Unicode (a lone surrogate)."""
    ids = [image_id.encode("utf-8") for image_id, _, _ in items]  # UnicodeEncodeError is a ValueError
    for _, _, content_type in items:
        if content_type not in IMAGE_CONTENT_TYPES:
            raise ValueError(f"content type {content_type!r}: image/png or image/jpeg")
    while True:
        boundary = secrets.token_hex(16).encode("ascii")
        if not any(boundary in data for _, data, _ in items) and not any(boundary in i for i in ids):
            break
    dash = b"--" + boundary
    id_head = dash + b'\r\nContent-Disposition: form-data; name="image_id"\r\n\r\n'
    chunks = []
    for image_id, (_, data, content_type) in zip(ids, items):
        chunks += [id_head, image_id, b"\r\n", dash,
                   b'\r\nContent-Disposition: form-data; name="image"; filename="image',
                   IMAGE_CONTENT_TYPES[content_type], b'"\r\nContent-Type: ', content_type.encode("ascii"),
                   b"\r\n\r\n", data, b"\r\n"]
    chunks.append(dash + b"--\r\n")
    return b"".join(chunks), "multipart/form-data; boundary=" + boundary.decode("ascii")


class InferenceClient:
    """POSTs batches to /v1/predict, spreading them round-robin over the service URLs."""

    def __init__(self, settings: InferenceClientSettings, session=None):
        """``session``: what sends the requests, a ``requests.Session`` by default (a test's
        fake).  consumers.embedded's subclass sends none: it calls the service's core."""
        import requests

        self.urls = [u.strip().rstrip("/") for u in settings.inference_url.split(",") if u.strip()]
        self._next = itertools.cycle(self.urls)
        self.timeout = settings.inference_timeout_s
        self.session = session if session is not None else requests.Session()
        token = secret(settings.inference_token)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, url: str, path: str, **kwargs):
        import requests

        try:
            return self.session.request(method, f"{url}{path}", timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise ServiceUnavailable("timeout", None, url, f"{type(exc).__name__}: {exc}") from None
        except requests.ConnectionError as exc:
            raise ServiceUnavailable("connection", None, url, f"{type(exc).__name__}: {exc}") from None
        except requests.RequestException as exc:
            raise ServiceUnavailable("request failed", None, url, f"{type(exc).__name__}: {exc}") from None

    def _raise_unless_200(self, resp, url: str) -> None:
        status = resp.status_code
        if status != 200:
            if status == 503:
                # This instance cannot serve now (its model loads, it is stopping): the next
                # try opens a new connection instead of asking the same one again, so that
                # another instance behind the same address can answer it (a load balancer's
                # other backend, or the old service of a handover on one port: stack/handover.py).
                self.session.close()
            cause = "server error" if status >= 500 else TRANSIENT_STATUS.get(status, "unexpected status")
            raise ServiceUnavailable(cause, status, url, _snippet(resp), retry_after(resp))

    def predict(self, instances: list[dict]) -> dict:
        """The service's answer to ``instances``, a valid PredictResponse (as a dict) with
        exactly one prediction per instance: ``predictions[i]`` answers ``instances[i]``.

        Raises ServiceUnavailable (transient: retry the same batch later) or BatchRejected
        (400/413: the service refused this request)."""
        return self._predict([inst["image_id"] for inst in instances], json={"instances": instances})

    def predict_files(self, items: list[tuple[str, bytes, str]]) -> dict:
        """The same as :meth:`predict` for (image_id, image bytes, content type "image/png" or
        "image/jpeg") triples, sent as one multipart/form-data request (no base64, no JSON):
        ``predictions[i]`` answers ``items[i]``; the same errors, the same checks."""
        body, content_type = encode_multipart(items)
        return self._predict([item[0] for item in items], data=body, headers={"Content-Type": content_type})

    def _predict(self, image_ids: list[str], **request) -> dict:
        url = next(self._next)
        resp = self._call("POST", url, "/v1/predict", **request)
        if resp.status_code in REFUSED_STATUS:
            reason = _service_error(resp)
            if reason is None and resp.status_code == 400:
                # Every error of the service is JSON {"error": ...}: a 400 without it comes
                # from something in front of the service and says nothing about the images.
                raise ServiceUnavailable("400 not from the service", 400, url, _snippet(resp))
            raise BatchRejected(resp.status_code, url, reason or _snippet(resp))
        self._raise_unless_200(resp, url)
        return self._predictions(resp, url, image_ids)

    @staticmethod
    def _predictions(resp, url: str, image_ids: list[str]) -> dict:
        """A 200's body, checked.  A body that is not a PredictResponse, or whose predictions
        cannot be paired with the images sent (a wrong count, an entry for another image), is
        transient, not a reason to dead-letter: the images are not at fault, and the answer
        of another try (or of another service URL) will be right.  It is a service bug or
        a damaged response; retrying keeps every image and says so in the log."""
        from pydantic import ValidationError

        try:
            body = PredictResponse.model_validate_json(resp.content)
        except ValidationError as exc:
            raise ServiceUnavailable("invalid response", 200, url,
                                     f"not a PredictResponse: {_first_problems(exc)}") from None
        if len(body.predictions) != len(image_ids):
            raise ServiceUnavailable("invalid response", 200, url,
                                     f"{len(body.predictions)} predictions for {len(image_ids)} instances")
        for i, (pred, image_id) in enumerate(zip(body.predictions, image_ids)):
            if pred.image_id is not None and pred.image_id != image_id:
                raise ServiceUnavailable("invalid response", 200, url,
                                         f"predictions[{i}] is for image {pred.image_id!r}, instances[{i}] "
                                         f"is {image_id!r}: not in the order of the instances")
        return body.model_dump(mode="json")

    def model_info(self, url: str) -> dict:
        """``GET url/v1/model`` (a ModelInfo as a dict); ServiceUnavailable while it cannot answer."""
        from pydantic import ValidationError

        resp = self._call("GET", url, "/v1/model")
        self._raise_unless_200(resp, url)
        try:
            return ModelInfo.model_validate_json(resp.content).model_dump()
        except ValidationError as exc:
            raise ServiceUnavailable("invalid response", 200, url,
                                     f"not a ModelInfo: {_first_problems(exc)}") from None


def service_limits(client: InferenceClient, cfg: InferenceClientSettings, stop) -> dict[str, int] | None:
    """Each service URL's MAX_REQUEST_IMAGES (``max_request_images`` of /v1/model), asking
    again with backoff while a service is not up yet (down, loading, refusing the token for
    now); None when stopped first.  Every URL must answer: each gets batches."""
    limits: dict[str, int] = {}
    backoff = Backoff(cfg.retry_initial_s, cfg.retry_max_s)
    while not stop.is_set():
        failures = []
        for url in client.urls:
            if url not in limits:
                try:
                    limits[url] = client.model_info(url)["max_request_images"]
                except ServiceUnavailable as exc:
                    failures.append(exc)
        if not failures:
            return limits
        delay = soonest(backoff.next(), [exc.retry_after_s for exc in failures])
        for exc in failures:
            log.warning("service not ready at start: %s; asking /v1/model again in %.1f s", exc, delay)
        stop.wait(delay)
    return None
