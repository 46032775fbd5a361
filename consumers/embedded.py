"""``INFERENCE_MODE=embedded``: the inference consumer runs the service's model in its own
process, with no HTTP hop.

The seam is the client's: :func:`embedded_client` is an
:class:`~consumers.predict_client.InferenceClient` whose requests go to the service's
Flask app (``inference.create_app``, built here, in this process) through its WSGI
interface instead of a socket, so ``predict_files`` keeps its contract (the same
``PredictResponse`` dict, ``predictions[i]`` answering ``items[i]``), and the consumer its
failure policy, unchanged: a model still loading answers 503 (transient: the batch waits),
an image the service refuses gets its per-image error, the start-up check of
``PREDICT_BATCH_IMAGES`` against ``MAX_REQUEST_IMAGES`` reads ``/v1/model``.  The model, its
dynamic batcher, its limits, its metrics (served on the consumer's ``/metrics``) and its
settings (``MODEL_ENGINE``, ``MODEL_WEIGHTS``, ``MAX_REQUEST_IMAGES`` ... from this process's
environment) are the service's.

Decision: through the app rather than straight to the model.  Decoding, per-image
errors, limits, deadlines and backpressure are the service's code, not a second copy of
it that could drift; what remains of the HTTP hop is building and splitting the multipart
body in memory (about 80 us per image for 64 32x32 PNGs: docs/ARCHITECTURE.md,
bench/decode_cost.py), against a socket, Gunicorn and a second process.

This module is the one place where a consumer imports the inference service
(pyproject.toml's layers contract names the exception), and only when the mode is
embedded: the service consumer never loads Flask nor a model runtime.
"""

from __future__ import annotations

import json as jsonlib
import urllib.parse

from common.settings import InferenceClientSettings
from consumers.predict_client import InferenceClient

EMBEDDED_URL = "http://embedded"  # what the logs and errors name; never connected to


class WsgiResponse:
    """The part of ``requests.Response`` the client reads."""

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return jsonlib.loads(self.content)


class WsgiSession:
    """The part of ``requests.Session`` the client uses, answered by a WSGI app in this
    process: ``request(method, url, ...)`` calls the app with the URL's path."""

    def __init__(self, app):
        self._client = app.test_client()
        self.headers: dict[str, str] = {}

    def request(self, method: str, url: str, timeout: float | None = None, data: bytes | None = None,
                json=None, headers: dict | None = None) -> WsgiResponse:
        # timeout: the app's own deadline (INFERENCE_REQUEST_TIMEOUT_S) bounds a request.
        resp = self._client.open(urllib.parse.urlsplit(url).path, method=method, data=data, json=json,
                                 headers={**self.headers, **(headers or {})})
        return WsgiResponse(resp.status_code, resp.get_data())


def embedded_client(cfg: InferenceClientSettings, test_config: dict | None = None) -> InferenceClient:
    """An InferenceClient answered by the service's app built in this process (its model
    loading in the background, as in a Gunicorn worker).  ``test_config``: create_app's."""
    from inference import create_app  # the service, in this process: Flask and a model runtime

    session = WsgiSession(create_app(test_config))
    return InferenceClient(cfg.model_copy(update={"inference_url": EMBEDDED_URL}), session=session)
