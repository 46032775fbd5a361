"""report.html (analysis/html_report.py) in a real headless Chromium: the page renders from the
file alone (no network), without console errors, every figure loads, and the numbers on the
page are those of the experiment's JSON files (percentiles.json, experiment.json,
accuracy.json).

REPORT_SCREENSHOT=docs/img/report.png saves the page as it looked (docs/USAGE.md shows it)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from analysis.cli import main
from common.settings import SuiteSettings
from tests.support import write_experiment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Three configurations x three trials of 120 correlated latencies, the third slower."""
    rng = np.random.default_rng(4)

    def trial(scale):
        x = np.empty(120)
        x[0] = rng.standard_normal() * 0.35
        for t in range(1, 120):
            x[t] = 0.7 * x[t - 1] + rng.standard_normal() * 0.35 * np.sqrt(1 - 0.49)
        return (scale * np.exp(4.6 + x)).round(3).tolist()

    out = write_experiment(tmp_path_factory.mktemp("report") / "experiment-test",
                           {n: [trial(scale) for _ in range(3)] for n, scale in ((1, 1.0), (2, 1.05), (3, 2.0))},
                           record={"dead_letters": {"count": 0, "by_reason": {}},
                                   "knee": {"producers": 3, "offered_img_s": 30.0}})
    assert main([str(out), "--out", str(out)]) == 0
    return out


def test_the_report_page_renders_offline_with_the_runs_numbers(experiment, browser):
    from selenium.webdriver.common.by import By

    page = experiment / "report.html"
    source = page.read_text()
    # self-contained: nothing to fetch (no http(s) source, link or import; figures inline)
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', source) and "@import" not in source
    browser.get(page.as_uri())
    assert browser.title == "Latency experiment experiment-test"

    images = browser.find_elements(By.TAG_NAME, "img")
    assert {img.get_attribute("alt") for img in images} >= {"Latency CDF", "Throughput and latency against load",
                                                            "Stage breakdown", "Confusion matrix"}
    for img in images:
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 400

    def shown(key):
        (element,) = browser.find_elements(By.CSS_SELECTOR, f'[data-key="{key}"]')
        return element

    tables = json.loads((experiment / "percentiles.json").read_text())
    assert [r["run"] for r in tables["rows"]] == ["1-producer", "2-producers", "3-producers"]
    for row in tables["rows"]:
        for key in [f"p{p}_{k}" for p in (50, 90, 95, 99) for k in ("ms", "ci_low_ms", "ci_high_ms")] + [
                "max_ms", "throughput_img_s", "throughput_ci_low_img_s", "throughput_ci_high_img_s"]:
            element = shown(f"{row['run']}/{key}")
            assert json.loads(element.get_attribute("data-value")) == row[key]
            assert element.text == f"{row[key]:,.1f}", (row["run"], key)
        assert shown(f"{row['run']}/count").text == str(row["count"]) and row["trials"] == 3
    for i, d in enumerate(tables["differences"]):
        assert shown(f"differences/{i}/difference_ms").text == f"{d['difference_ms']:,.1f}"
    verdicts = browser.find_element(By.XPATH, "//h3[.='Differences between configurations']/following::table[1]").text
    assert "b higher" in verdicts  # 3 producers are twice as slow as 2

    record = json.loads((experiment / "experiment.json").read_text())
    trials = [t for run in record["runs"] for t in run["trials"]]
    assert len(trials) == 9
    for t in trials:
        assert shown(f"experiment/{t['dir']}/sent").text == str(t["summary"]["sent"])
        assert shown(f"experiment/{t['dir']}/lost").text == str(t["summary"]["lost"]) == "0"
        assert shown(f"experiment/{t['dir']}/settle_s").text == f"{t['settle']['settle_s']:,.1f} s"
    assert browser.find_element(By.ID, "lost-total").text == "0"
    assert browser.find_element(By.ID, "dead-letters").text == str(record["dead_letters"]["count"])
    accuracy = json.loads((experiment / "accuracy.json").read_text())
    assert shown("accuracy/n").text == f"{accuracy['all_runs']['n']:,}"
    assert shown("accuracy/overall_pct").text == f"{100 * accuracy['all_runs']['overall_accuracy']:,.1f}"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "NOT meaningful" in body and "3 producers" in body  # untrained model; the knee
    assert "random" in body  # the weights' provenance

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
    screenshot = SuiteSettings().report_screenshot
    if screenshot:
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1280, height + 40)
        browser.save_screenshot(screenshot)
