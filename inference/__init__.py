"""The inference service: Flask app factory (served by Gunicorn, see gunicorn.conf.py).

    gunicorn -c inference/gunicorn.conf.py 'inference:create_app()'

``create_app`` runs in every worker (``preload_app`` is off), so each worker loads
its own model in a background thread after the fork; the master never imports
TensorFlow.  Nothing in this module imports TensorFlow either, nor Flask before
``create_app`` runs.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Mapping

from common.log import setup_logging
from common.settings import MetricsSettings, ServiceSettings, describe, request_bytes_limit

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

# PyTorch's OpenMP threads spin between operations by default, taking the cores that
# Gunicorn's threads, the consumers and the broker need beside the model: measured side by
# side on 2 shared cores, passive waiting gave the torch engine 5x the bare-model rate and
# 2.3x the pipeline's (docs/PERFORMANCE.md, "OpenMP's wait policy").  OpenMP reads it when
# torch loads, which is after this package: every module that imports torch is in it.  A
# value the user set (OMP_WAIT_POLICY=ACTIVE on a dedicated host) wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the app.  ``test_config`` keys are Flask config keys; those that name a
    ``ServiceSettings`` field (``MODEL_WEIGHTS``, ``MAX_REQUEST_IMAGES`` ...) override the
    environment.  ``MODEL_HOST`` may pass an already loaded :class:`inference.serving.ModelHost`
    (tests share one model between apps)."""
    from flask import Flask  # here: importing inference.classify (the embedded consumer) loads no Flask

    from inference import api
    from inference.metrics import ServiceMetrics
    from inference.serving import ModelHost

    test_config = dict(test_config or {})
    if not logging.getLogger().handlers:  # under Gunicorn; pytest has its own handlers
        setup_logging()

    fields = ServiceSettings.model_fields
    overrides = {k.lower(): v for k, v in test_config.items() if k.lower() in fields}
    settings = ServiceSettings(**overrides)

    app = Flask(__name__)
    app.config.from_mapping(
        SETTINGS=settings,
        # Werkzeug answers 413 for bodies over this, before the JSON is parsed.
        MAX_CONTENT_LENGTH=request_bytes_limit(settings),
        # multipart/form-data: 413 for more parts than two per allowed image (+ slack), or a
        # text part (an image_id) over 500 kB (Flask's default, kept: Werkzeug also applies it
        # to its parser's buffer, which holds up to a 64 KiB read plus a part's tail); image
        # file parts are bounded by the body.
        MAX_FORM_PARTS=2 * settings.max_request_images + 16,
        MAX_FORM_MEMORY_SIZE=500_000,
    )
    app.config.from_mapping({k: v for k, v in test_config.items() if k.lower() not in fields})
    app.json.sort_keys = False

    metrics_settings = MetricsSettings()
    metrics = ServiceMetrics(metrics_settings.metrics_enabled)
    app.extensions["inference_metrics"] = metrics
    model_host = app.config.get("MODEL_HOST")
    if model_host is None:
        log.info("inference service starting; %s", describe(settings, metrics_settings))
        model_host = ModelHost(settings, metrics).start()
    elif model_host.ready:
        metrics.model_state(ready=True, failed=False)
    app.extensions["model_host"] = model_host

    api.init_app(app)
    return app
