"""The metrics through the real stack (docs/OBSERVABILITY.md): N images through the
session's local stack, every component's counters and histogram counts move by exactly
N, a real Prometheus started here scrapes every component, its histogram_quantile of the
end-to-end latency agrees with the producer's own percentiles (latencies.csv) to within
the bucket that holds them, and every Grafana panel's PromQL returns series.  The
Prometheus is the one the stack starts (``make up`` does the same), with the generated
scrape configuration and the project's rules.

Nothing here compares a time or a rate with a constant: waits end on a condition, under
the hang guard."""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from analysis.stats import percentile
from common.metrics import LATENCY_BUCKETS_S
from common.rundir import read_latencies
from tests.binaries import required_binary
from tests.support import HANG_GUARD_S, Prometheus, eventually

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "iot-pipeline.json"
N = 120
pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``(sample name, sorted labels) -> value`` of one /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def endpoints(env: dict) -> dict[str, str]:
    return {"inference": env["INFERENCE_URL"].rstrip("/") + "/metrics",
            "inference-consumer": f"http://127.0.0.1:{env['INFERENCE_CONSUMER_METRICS_PORT']}/metrics",
            "db-consumer": f"http://127.0.0.1:{env['DB_CONSUMER_METRICS_PORT']}/metrics"}


@pytest.fixture(scope="module")
def prometheus(local_stack):
    """The real Prometheus the session's stack started (it does when the binary is
    installed), scraping every component each second (STACK_SCRAPE_INTERVAL in conftest)."""
    required_binary("prometheus")
    env = local_stack["env"]
    assert env.get("PROMETHEUS_URL"), "prometheus is installed but the stack did not start it"
    prom = Prometheus(env["PROMETHEUS_URL"])
    config = (local_stack["dir"] / "prometheus" / "prometheus.yml").read_text()
    assert all(url.split("://", 1)[1].rsplit("/metrics", 1)[0] in config for url in endpoints(env).values())
    # Its targets are known a few seconds after it starts (discovery updates are batched):
    # wait until it scraped every running component once.
    jobs = {"inference", "inference-consumer", "db-consumer", "prometheus"}
    assert eventually(lambda: {r["metric"]["job"] for r in prom.query("up == 1")} >= jobs), prom.query("up")
    return prom


def quiet(env: dict, window_s: float = 3.0) -> dict | None:
    """Every component's samples, once the stack is done with earlier tests' records (the
    session's stack is shared: the DB consumer may still be storing the last test's
    images): two scrapes ``window_s`` apart with the same consumer counters, else None."""
    import time

    first = {job: scrape(url) for job, url in endpoints(env).items()}
    time.sleep(window_s)
    second = {job: scrape(url) for job, url in endpoints(env).items()}

    def counters(samples):
        return {k: v for job in ("inference-consumer", "db-consumer") for k, v in samples[job].items()
                if k[0].startswith("iot_") and k[0].endswith(("_total", "_count", "_sum"))}
    return second if counters(first) == counters(second) else None


@pytest.fixture(scope="module")
def observed_run(local_stack, prometheus, tmp_path_factory):
    """N images through the stack by a producer that serves its metrics on the port the
    stack kept for it; every component scraped before and after."""
    env = local_stack["env"]
    before = eventually(lambda: quiet(env))
    assert before, "the session stack never stopped working on earlier tests' records"
    out = tmp_path_factory.mktemp("metrics-run")
    producer_url = f"http://127.0.0.1:{env['PRODUCER_METRICS_PORT']}/metrics"
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "--out", str(out), "--no-progress", "--count", str(N),
         "--rate", "60", "--devices", "3", "--producer-id", "it-metrics",
         "--result-timeout", str(HANG_GUARD_S)], cwd=ROOT, capture_output=True, text=True,
        env={**env, "METRICS_PORT": env["PRODUCER_METRICS_PORT"], "METRICS_HOLD_S": str(HANG_GUARD_S)},
        timeout=3 * HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"metrics on {producer_url}" in proc.stderr

    def settled():  # the DB consumer stored every image and result
        after = {job: scrape(url) for job, url in endpoints(env).items()}
        written = {kind: value(after["db-consumer"], "iot_db_consumer_documents_written_total", kind=kind)
                   - value(before["db-consumer"], "iot_db_consumer_documents_written_total", kind=kind)
                   for kind in ("image", "result")}
        return after if written == {"image": N, "result": N} else None

    after = eventually(settled)
    assert after, "the DB consumer did not store every image and result"
    return {"before": before, "after": after, "out": out, "stderr": proc.stderr,
            "producer_port": env["PRODUCER_METRICS_PORT"]}


def delta(run, job: str, name: str, **labels) -> float:
    return value(run["after"][job], name, **labels) - value(run["before"][job], name, **labels)


def test_every_component_counts_each_image_exactly_once(observed_run):
    run = observed_run
    ic, db, svc = "inference-consumer", "db-consumer", "inference"
    assert delta(run, ic, "iot_inference_consumer_records_polled_total") == N
    assert delta(run, ic, "iot_inference_consumer_images_predicted_total") == N
    assert delta(run, ic, "iot_inference_consumer_batch_images_sum") == N
    assert delta(run, ic, "iot_inference_consumer_dead_letters_total") == 0
    calls = delta(run, ic, "iot_inference_consumer_predict_duration_seconds_count")
    assert calls >= 1 and delta(run, ic, "iot_inference_consumer_batch_images_count") >= 1
    assert delta(run, ic, "iot_inference_consumer_commit_duration_seconds_count") >= 1
    # The service: every image predicted, in as many requests as the consumer made.
    assert delta(run, svc, "iot_service_images_total", outcome="predicted") == N
    assert delta(run, svc, "iot_service_model_batch_images_sum") == N
    assert delta(run, svc, "iot_service_requests_total", handler="/v1/predict", code="200") == calls
    assert delta(run, svc, "iot_service_request_duration_seconds_count", handler="/v1/predict") == calls
    assert delta(run, svc, "iot_service_model_duration_seconds_count") == \
        delta(run, svc, "iot_service_model_batch_images_count") >= 1
    assert value(run["after"][svc], "iot_service_model_ready") == 1
    assert value(run["after"][svc], "iot_service_queue_images") == 0
    # The DB consumer: N images and N results, in bulk writes that hold them all (an image
    # and its result polled together are one upsert: between N and 2N upserts).
    assert delta(run, db, "iot_db_consumer_documents_written_total", kind="image") == N
    assert delta(run, db, "iot_db_consumer_documents_written_total", kind="result") == N
    if delta(run, db, "iot_db_consumer_write_errors_total") == 0:
        assert N <= delta(run, db, "iot_db_consumer_bulk_updates_sum") <= 2 * N
    # Each process reports its own CPU and memory (the service's: the whole Gunicorn tree).
    for job in (svc, ic, db):
        assert value(run["after"][job], "process_cpu_seconds_total") > 0, job
        assert value(run["after"][job], "process_resident_memory_bytes") > 0, job


def test_prometheus_scrapes_the_producers_final_counts(observed_run, prometheus):
    """The producer's counters and its e2e histogram count are N in Prometheus: the producer
    (a batch job) waited for one scrape after its run (METRICS_HOLD_S)."""
    # This run's producer only (other tests' producers were scraped too, on other ports).
    mine = f'{{instance="127.0.0.1:{observed_run["producer_port"]}"}}'
    for name in ("iot_producer_images_sent_total", "iot_producer_images_acknowledged_total",
                 "iot_producer_results_received_total", "iot_producer_e2e_latency_seconds_count"):
        got = eventually(lambda name=name: prometheus.scalar(f"sum(last_over_time({name}{mine}[10m]))") == N)
        assert got, (name, prometheus.scalar(f"sum(last_over_time({name}{mine}[10m]))"))
    assert prometheus.scalar(f"sum(last_over_time(iot_producer_images_failed_total{mine}[10m]))") == 0


def test_prometheus_scrapes_every_component_of_the_stack(observed_run, prometheus):
    env_jobs = {"inference", "inference-consumer", "db-consumer"}
    up = eventually(lambda: {r["metric"]["job"] for r in prometheus.query("up == 1")} >= env_jobs
                    and prometheus.query("up == 1"))
    assert env_jobs <= {r["metric"]["job"] for r in up}
    # The recording rules are loaded and evaluated.
    assert eventually(lambda: prometheus.query("iot:consumer_lag_records:sum"))
    # What Prometheus holds is what the components say (once it scraped after the run).
    final = value(observed_run["after"]["db-consumer"], "iot_db_consumer_documents_written_total")
    assert eventually(lambda: prometheus.scalar("sum(iot_db_consumer_documents_written_total)") == final)


def bucket_of(x: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the histogram bucket that holds ``x``."""
    i = bisect.bisect_left(LATENCY_BUCKETS_S, x)
    lower = LATENCY_BUCKETS_S[i - 1] if i > 0 else 0.0
    upper = LATENCY_BUCKETS_S[i] if i < len(LATENCY_BUCKETS_S) else float("inf")
    return lower, upper


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_histogram_quantile_agrees_with_the_producers_percentiles(observed_run, prometheus, q):
    latencies = sorted(r.e2e_ms / 1000 for r in read_latencies(observed_run["out"] / "latencies.csv")
                       if r.e2e_ms is not None)
    assert len(latencies) == N
    exact = percentile(latencies, q * 100)  # nearest rank: a measured sample
    mine = f'{{instance="127.0.0.1:{observed_run["producer_port"]}"}}'  # this run's producer only
    expr = (f"histogram_quantile({q}, sum by (le) "
            f"(last_over_time(iot_producer_e2e_latency_seconds_bucket{mine}[10m])))")
    assert eventually(lambda: prometheus.scalar(
        f"sum(last_over_time(iot_producer_e2e_latency_seconds_count{mine}[10m]))") == N)
    estimate = prometheus.scalar(expr)
    lower, upper = bucket_of(exact)
    # histogram_quantile interpolates inside the bucket where the rank falls, which is the
    # bucket holding the nearest-rank sample: the two agree within that bucket's width.
    assert lower <= estimate <= upper, (q, exact, estimate, (lower, upper))


def test_every_dashboard_panel_query_returns_series(observed_run, prometheus):
    """Grafana is not installed here: each panel's PromQL goes to the test's Prometheus,
    which must answer with at least one series (rates over the run's window)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"]
               for target in panel.get("targets", []) if target.get("expr")]
    assert len(queries) >= 8
    # $__rate_interval is Grafana's; here a window that covers the run.
    empty = []
    for title, expr in queries:
        promql = expr.replace("$__rate_interval", "10m").replace("$__range", "10m")
        if not eventually(lambda promql=promql: prometheus.query(promql), timeout_s=min(60, HANG_GUARD_S)):
            empty.append((title, promql))
    assert not empty, f"panels without series: {empty}"
