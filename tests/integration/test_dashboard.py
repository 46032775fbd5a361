"""The live dashboard (python -m dashboard, started by the stack) in a real headless
Chromium: the page loads without console errors, its numbers are the run's (MongoDB's
count, Prometheus's dead letters, live percentiles), and the latest images appear as
thumbnails with their prediction, confidence and ground truth, without a reload.

DASHBOARD_SCREENSHOT=docs/img/dashboard.png saves the page as it looked (the picture in
docs/OBSERVABILITY.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from common.settings import MongoSettings, SuiteSettings
from tests.support import HANG_GUARD_S, eventually

ROOT = Path(__file__).resolve().parents[2]
N = 40
pytestmark = pytest.mark.integration


def collection(env):
    from tests.support import mongo_connect as connect, mongo_images as images_collection

    mongo = MongoSettings(mongo_uri=env["MONGO_URI"])
    return images_collection(connect(mongo), mongo)


def number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def test_the_dashboard_shows_the_run(local_stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    env = local_stack["env"]
    assert env.get("DASHBOARD_URL"), "the stack did not start the dashboard"
    url = env["DASHBOARD_URL"]
    assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok"}
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "--out", str(tmp_path), "--no-progress", "--count", str(N),
         "--rate", "40", "--devices", "2", "--producer-id", "it-dashboard",
         "--result-timeout", str(HANG_GUARD_S)], cwd=ROOT, capture_output=True, text=True,
        env={**env, "METRICS_PORT": env["PRODUCER_METRICS_PORT"], "METRICS_HOLD_S": str(HANG_GUARD_S)},
        timeout=3 * HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = collection(env)
    assert eventually(lambda: images.count_documents({"producer_id": "it-dashboard",
                                                      "prediction": {"$exists": True}}) == N)

    browser.get(url + "/")
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731

    # Stored: what MongoDB holds (the page polls; it converges on the count).
    stored = images.count_documents({})
    assert eventually(lambda: number(text("stored")) == stored), (text("stored"), stored)
    # Dead letters: what Prometheus says (the page's own query).
    prom = env.get("PROMETHEUS_URL")
    if prom:
        query = 'sum({__name__=~"iot_(inference|db)_consumer_dead_letters_total"})'
        dead = float(requests.get(prom + "/api/v1/query", params={"query": query},
                                  timeout=10).json()["data"]["result"][0]["value"][1])
        assert eventually(lambda: number(text("dead_letters")) == dead), (text("dead_letters"), dead)
        # Live percentiles from this run's latencies, in order.
        assert eventually(lambda: all(number(text(q)) is not None for q in ("p50", "p95", "p99")))
        p50, p95, p99 = (number(text(q)) for q in ("p50", "p95", "p99"))
        assert 0 < p50 <= p95 <= p99
        assert eventually(lambda: "live" in text("status")), text("status")

    # Thumbnails: the latest classified images, newest first, with what MongoDB says of them.
    latest = list(images.find({"prediction": {"$exists": True}}, {"prediction": 1, "label": 1})
                  .sort("prediction_stored_at", -1).limit(12))
    thumbs = eventually(lambda: browser.find_elements(By.CSS_SELECTOR, "#recent .thumb"))
    assert len(thumbs) == len(latest)
    shown = {t.get_attribute("data-image-id"): t for t in thumbs}
    for doc in latest[:3]:
        card = shown[str(doc["_id"])]
        assert card.find_element(By.CSS_SELECTOR, ".pred").text == doc["prediction"]
        assert card.find_element(By.CSS_SELECTOR, ".truth").text == f"truth: {doc['label']}"
        assert card.find_element(By.CSS_SELECTOR, ".conf").text.endswith("%")
        img = card.find_element(By.TAG_NAME, "img")
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 32
    # The charts were drawn by the vendored uPlot.
    assert len(browser.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    screenshot = SuiteSettings().dashboard_screenshot
    if screenshot:
        browser.save_screenshot(screenshot)


def test_the_dashboard_wants_its_token_when_it_has_one(local_stack, tmp_path):
    """DASHBOARD_TOKEN set: the API answers 401 without it, 200 with the bearer or the
    cookie that /?token= sets; a non-loopback bind without a token refuses to start."""
    from stack.ports import free_port

    env = {**local_stack["env"], "DASHBOARD_TOKEN": "s3cret-dash"}
    refused = subprocess.run([sys.executable, "-m", "dashboard", "--bind", "0.0.0.0:1"], cwd=ROOT,
                             env={k: v for k, v in env.items() if k != "DASHBOARD_TOKEN"},
                             capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert refused.returncode == 2 and "DASHBOARD_TOKEN" in refused.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--bind", f"127.0.0.1:{port}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return proc.poll() is not None
        assert eventually(up) and proc.poll() is None
        assert requests.get(url + "/api/summary", timeout=10).status_code == 401
        assert requests.get(url + "/api/summary", headers={"Authorization": "Bearer wrong"},
                            timeout=10).status_code == 401
        assert requests.get(url + "/api/recent", headers={"Authorization": "Bearer s3cret-dash"},
                            timeout=30).status_code == 200
        session = requests.Session()
        assert session.get(url + "/?token=wrong", timeout=10).status_code == 401
        page = session.get(url + "/?token=s3cret-dash", timeout=10)
        assert page.status_code == 200 and "IoT image pipeline" in page.text
        assert session.get(url + "/api/summary", timeout=30).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert "s3cret-dash" not in err  # the token is never logged
