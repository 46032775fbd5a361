"""``INFERENCE_MODE=embedded``: the inference consumer runs the service's model in its own
process, with no HTTP hop and no Flask or Gunicorn.

The seam is the client's: :func:`embedded_client` is an
:class:`~consumers.predict_client.InferenceClient` whose ``predict_files`` hands the
(image_id, image bytes, content type) items straight to the service's own request core,
``inference.classify.classify_items``, on a :class:`~inference.serving.ModelHost` started in
this process (its model loading in the background, as in a Gunicorn worker).  The contract
the consumer relies on is unchanged: the same ``PredictResponse`` dict, ``predictions[i]``
answering ``items[i]``, a per-image error for an image the service cannot decode, and the
same exceptions by the status the service would have answered: 503 (model loading or
failed, overloaded, past its deadline, the model call failed) is
:class:`~consumers.predict_client.ServiceUnavailable` (transient: the batch waits), 400/413
(over ``MAX_REQUEST_IMAGES`` or the body limit) :class:`~consumers.predict_client.BatchRejected`
(the batch is split).  The start-up check of ``PREDICT_BATCH_IMAGES`` against
``MAX_REQUEST_IMAGES`` reads :meth:`EmbeddedClient.model_info`, the ``/v1/model`` answer.
The model, its dynamic batcher, its limits, its ``iot_service_*`` metrics (in this
process's default registry, so served on the consumer's ``/metrics``) and its settings
(``MODEL_ENGINE``, ``MODEL_WEIGHTS``, ``MAX_REQUEST_IMAGES`` ... from this process's
environment) are the service's.

Decision: straight to the service's request core rather than through its Flask app.
Decoding, per-image errors, limits, deadlines and backpressure are still the service's
code (inference/classify.py, which ``/v1/predict`` calls too), not a second copy that could
drift; what the HTTP hop cost in process (building and splitting a multipart body, a WSGI
request) is gone, and so are Flask and Werkzeug from the consumer.

This module is the one place where a consumer imports the inference service
(pyproject.toml's layers contract names the exception), and only when the mode is
embedded: the service consumer never loads a model runtime.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Mapping

from common.settings import InferenceClientSettings, MetricsSettings, ServiceSettings, describe
from consumers.predict_client import BatchRejected, InferenceClient, ServiceUnavailable

log = logging.getLogger("consumers.inference")

EMBEDDED_URL = "http://embedded"  # what the logs and errors name; never connected to


class EmbeddedClient(InferenceClient):
    """An InferenceClient answered by a ModelHost in this process (no session, no socket)."""

    def __init__(self, settings: InferenceClientSettings, model_host, service: ServiceSettings, metrics):
        """``model_host``: an inference.serving.ModelHost (started); ``metrics``: its
        inference.metrics.ServiceMetrics."""
        self.urls = [EMBEDDED_URL]
        self._next = itertools.cycle(self.urls)
        self.timeout = settings.inference_timeout_s  # the model's own deadline is INFERENCE_REQUEST_TIMEOUT_S
        self.model_host, self.service, self.metrics = model_host, service, metrics

    def _answer(self, handler: str, call):
        """``call()``'s result, its ClassifyError as the client's exception by status, and the
        request counted as the service counts its own (``iot_service_requests_total``)."""
        from inference.classify import ClassifyError

        t0, status = time.perf_counter(), 200
        try:
            return call()
        except ClassifyError as exc:
            status = exc.status
            if exc.status in (400, 413):
                raise BatchRejected(exc.status, EMBEDDED_URL, exc.message) from None
            raise ServiceUnavailable("server error", exc.status, EMBEDDED_URL, exc.message,
                                     exc.retry_after_s) from None
        except Exception as exc:  # a bug, not the images': transient, as the service's 500
            status = 500
            log.exception("embedded inference failed")
            raise ServiceUnavailable("server error", 500, EMBEDDED_URL, f"{type(exc).__name__}: {exc}") from None
        finally:
            self.metrics.request(handler, status, time.perf_counter() - t0)

    def predict_files(self, items: list[tuple[str, bytes, str]]) -> dict:
        """The service's answer to ``items`` as a PredictResponse dict (see InferenceClient)."""
        from inference.classify import classify_items

        return self._answer("/v1/predict", lambda: classify_items(
            self.model_host, self.service, items, self.metrics).model_dump(mode="json"))

    def predict(self, instances: list[dict]) -> dict:
        raise NotImplementedError("the embedded client classifies files: predict_files")

    def model_info(self, url: str = EMBEDDED_URL) -> dict:
        """What ``/v1/model`` answers (a ModelInfo as a dict); ServiceUnavailable while the
        model loads."""
        from inference.classify import model_info

        return self._answer("/v1/model", lambda: model_info(self.model_host, self.service).model_dump())


def embedded_client(cfg: InferenceClientSettings, overrides: Mapping[str, Any] | None = None) -> EmbeddedClient:
    """An InferenceClient answered by the service's model in this process, which starts
    loading now (in a background thread).  ``overrides``: ServiceSettings fields by name, any
    case (``MODEL_WEIGHTS``, ``MAX_REQUEST_IMAGES`` ...), over the environment; other keys
    are ignored."""
    from inference.metrics import ServiceMetrics  # the service, in this process: a model runtime
    from inference.serving import ModelHost

    fields = ServiceSettings.model_fields
    service = ServiceSettings(**{k.lower(): v for k, v in (overrides or {}).items() if k.lower() in fields})
    metrics_settings = MetricsSettings()
    metrics = ServiceMetrics(metrics_settings.metrics_enabled)
    log.info("embedded inference starting; %s", describe(service, metrics_settings))
    host = ModelHost(service, metrics).start()
    return EmbeddedClient(cfg.model_copy(update={"inference_url": EMBEDDED_URL}), host, service, metrics)
