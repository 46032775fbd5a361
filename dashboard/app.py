"""The live dashboard's Flask app: the page (``/``, static/dashboard.js with the vendored
uPlot), the two JSON endpoints it polls (``/api/summary``: Prometheus and the stored
count; ``/api/recent``: the latest classified images) and ``/healthz``
(docs/OBSERVABILITY.md).  With DASHBOARD_TOKEN set every other route wants
``Authorization: Bearer <token>`` or the cookie that ``/?token=<token>`` sets.
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import time

import requests
from flask import Flask, abort, jsonify, make_response, redirect, render_template, request

from common.settings import DashboardSettings, StoreSettings, secret
from common.store.opening import configured, open_configured
from common.wire import (CONFIDENCE, CONTENT_TYPES, DEVICE_ID, FORMAT, IMAGE, IMAGE_ID, LABEL, PNG, PREDICTION,
                         PREDICTION_STORED_AT)

log = logging.getLogger(__name__)

COOKIE = "iot_dashboard_token"
WINDOW = "1m"
E2E = "iot_producer_e2e_latency_seconds_bucket"
QUERIES = {
    "throughput": f'sum(rate(iot_db_consumer_documents_written_total{{kind="image"}}[{WINDOW}]))',
    "predicted_rate": f"sum(rate(iot_inference_consumer_images_predicted_total[{WINDOW}]))",
    "p50": f"histogram_quantile(0.50, sum by (le) (rate({E2E}[{WINDOW}])))",
    "p95": f"histogram_quantile(0.95, sum by (le) (rate({E2E}[{WINDOW}])))",
    "p99": f"histogram_quantile(0.99, sum by (le) (rate({E2E}[{WINDOW}])))",
    "lag": 'sum({__name__=~"iot_(inference|db)_consumer_lag_records"})',
    "dead_letters": 'sum({__name__=~"iot_(inference|db)_consumer_dead_letters_total"})',
    "model_ready": "min(iot_service_model_ready)",
}
SERIES = ("throughput", "p50", "p95", "p99", "lag")


class Prometheus:
    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.session = requests.Session()

    def _get(self, path: str, **params) -> list:
        resp = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout_s)
        resp.raise_for_status()
        body = resp.json()
        if body.get("status") != "success":
            raise RuntimeError(body.get("error", "query failed"))
        return body["data"]["result"]

    def instant(self, expr: str) -> float | None:
        result = self._get("/api/v1/query", query=expr)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def series(self, expr: str, end: float, seconds: int = 600, step: int = 5) -> list[list[float | None]]:
        """``[[unix time, value or None], ...]`` of ``expr`` up to ``end`` (a multiple of ``step``
        shared by every series of one answer, so that their points line up)."""
        result = self._get("/api/v1/query_range", query=expr, start=end - seconds, end=end, step=step)
        if not result:
            return []
        return [[float(t), None if v in ("NaN", "+Inf", "-Inf") else float(v)] for t, v in result[0]["values"]]


def _thumbnail(doc: dict) -> str | None:
    image = doc.get(IMAGE)
    mime = CONTENT_TYPES.get(doc.get(FORMAT), CONTENT_TYPES[PNG])
    return f"data:{mime};base64," + base64.b64encode(bytes(image)).decode() if image else None


def create_app(settings: DashboardSettings | None = None, *, store: StoreSettings | None = None,
               backend=None) -> Flask:
    """``store`` and ``backend`` (the store's settings): :func:`common.store.opening.configured`,
    read from the environment when not given."""
    settings = settings or DashboardSettings()
    app = Flask(__name__)
    prom = Prometheus(settings.prometheus_url)
    if store is None or backend is None:
        store, backend = configured()
    store = open_configured(store, backend)
    source = store.name.lower()
    token = secret(settings.dashboard_token)

    @app.before_request
    def _require_token():
        if not token or request.path == "/healthz" or request.path.startswith("/static/"):
            return None
        given = request.args.get("token")
        if request.path == "/" and given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                abort(401)
            resp = make_response(redirect("/"))
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return resp
        header = request.headers.get("Authorization", "")
        scheme, _, bearer = header.partition(" ")
        candidate = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(candidate.encode(), token.encode()):
            return jsonify(error="missing or invalid token"), 401, {"WWW-Authenticate": 'Bearer realm="dashboard"'}
        return None

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/")
    def index():
        return render_template("index.html", refresh_ms=settings.dashboard_refresh_ms,
                               recent=settings.dashboard_recent_images)

    @app.get("/api/summary")
    def summary():
        out: dict = {"time": time.time(), "errors": []}
        for name, expr in QUERIES.items():
            try:
                out[name] = prom.instant(expr)
            except Exception as exc:  # noqa: BLE001 - shown on the page, the rest still answers
                out[name] = None
                out["errors"].append(f"prometheus: {type(exc).__name__}")
                log.warning("prometheus query %s failed: %s", name, exc)
        out["series"] = {}
        end = math.floor(time.time() / 5) * 5
        for name in SERIES:
            try:
                out["series"][name] = prom.series(QUERIES[name], end)
            except Exception as exc:  # noqa: BLE001
                out["series"][name] = []
                log.debug("prometheus range query %s failed: %s", name, exc)
        try:
            out["stored"] = store.count()
            out["classified"] = store.count(with_prediction=True)
        except Exception as exc:  # noqa: BLE001
            out["stored"] = out["classified"] = None
            out["errors"].append(f"{source}: {type(exc).__name__}")
            log.warning("%s count failed: %s", source, exc)
        return jsonify(out)

    @app.get("/api/recent")
    def recent():
        n = min(max(request.args.get("n", settings.dashboard_recent_images, type=int), 1), 100)
        try:
            docs = store.latest(n, (IMAGE, FORMAT, LABEL, PREDICTION, CONFIDENCE, DEVICE_ID, PREDICTION_STORED_AT))
        except Exception as exc:  # noqa: BLE001
            log.warning("%s query failed: %s", source, exc)
            return jsonify(images=[], error=f"{source}: {type(exc).__name__}"), 503
        return jsonify(images=[{"image_id": str(d[IMAGE_ID]), "thumbnail": _thumbnail(d), "label": d.get(LABEL),
                                "prediction": d.get(PREDICTION), "confidence": d.get(CONFIDENCE),
                                "device_id": d.get(DEVICE_ID), "stored_at": d.get(PREDICTION_STORED_AT)}
                               for d in docs])

    return app
