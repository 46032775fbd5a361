"""common/metrics.py and the components' recorders, without the stack: a failing metric
never raises, METRICS_PORT empty or 0 is off, /metrics answers, a producer waits for its
last scrape, lag follows the assignment."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import requests

from common.metrics import LATENCY_BUCKETS_S, LagGauge, Recorder, guarded, metric, serve
from common.settings import MetricsSettings, with_flags


class Broken(Recorder):
    @guarded
    def update(self):
        raise RuntimeError("mmap file full")


def test_a_failing_metric_is_logged_once_and_never_raises(caplog):
    rec = Broken()
    rec.update()  # would raise RuntimeError without @guarded
    rec.update()
    assert rec._failed == {"update"}
    assert sum("metric update update failed" in r.message for r in caplog.records) == 1


def test_metrics_off_skips_every_update():
    rec = Broken(enabled=False)
    assert rec.update() is None and not rec._failed


@pytest.mark.parametrize("raw, port", [("", 0), ("0", 0), ("9105", 9105)])
def test_metrics_port_empty_or_zero_is_off(monkeypatch, raw, port):
    monkeypatch.setenv("METRICS_PORT", raw)
    s = MetricsSettings()
    assert s.metrics_port == port and s.metrics_bind == "127.0.0.1"
    assert serve(MetricsSettings(metrics_port=0), "test") is None


def test_bad_metrics_settings_are_errors():
    with pytest.raises(ValueError, match="METRICS_PORT"):
        with_flags(MetricsSettings, metrics_port=70000)
    with pytest.raises(ValueError, match="METRICS_HOLD_S"):
        with_flags(MetricsSettings, metrics_hold_s=-1)


def test_latency_buckets_resolve_percentiles_between_10_ms_and_10_s():
    inside = [b for b in LATENCY_BUCKETS_S if 0.01 <= b <= 10]
    assert inside[0] == 0.01 and inside[-1] == 10.0
    assert max(b / a for a, b in zip(inside, inside[1:])) < 1.4  # a quantile within 40 % of the value


def test_serve_answers_metrics_and_holds_for_a_last_scrape():
    from common.metrics import ScrapeWatch  # noqa: F401 - the endpoint counts scrapes through it
    from stack.ports import free_port

    counter = metric("counter", "iot_test_things_total", "things")
    counter.inc(3)
    server = serve(MetricsSettings(metrics_port=free_port()), "test")
    assert server is not None
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        held = {}
        t = threading.Thread(target=lambda: held.update(ok=server.hold(600)))
        t.start()
        body = ""
        while t.is_alive():  # the hold ends with the first scrape after it began
            body = requests.get(url, timeout=10).text
            t.join(0.1)
        assert held["ok"] is True
        assert "iot_test_things_total 3.0" in body
        assert "process_cpu_seconds_total" in body and "process_resident_memory_bytes" in body
    finally:
        server.close()


def test_lag_gauge_follows_the_assignment():
    gauge = metric("gauge", "iot_test_lag_records", "lag", ("topic", "partition"))
    tp0, tp1 = SimpleNamespace(topic="t", partition=0), SimpleNamespace(topic="t", partition=1)
    assigned = [tp0, tp1]
    consumer = SimpleNamespace(assignment=lambda: list(assigned),
                               highwater=lambda tp: {0: 10, 1: 5}[tp.partition],
                               position=lambda tp, timeout_ms=None: {0: 4, 1: 5}[tp.partition])
    lag = LagGauge(gauge, every_s=0)
    lag.update(consumer)
    assert gauge.labels(topic="t", partition="0")._value.get() == 6
    assert gauge.labels(topic="t", partition="1")._value.get() == 0
    assigned.remove(tp1)  # a rebalance took partition 1
    lag.update(consumer)
    assert [(s.labels["partition"], s.value) for s in gauge.collect()[0].samples] == [("0", 6)]
