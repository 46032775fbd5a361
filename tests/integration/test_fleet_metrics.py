"""The producers of a fleet (make demo, make experiment, the bench) serve their metrics on
the stack's pool of producer ports, which its Prometheus scrapes: a run is visible live."""

from __future__ import annotations

import pytest

from experiments.fleet import run_fleet
from tests.support import Prometheus
from tests.binaries import required_binary
from tests.support import HANG_GUARD_S, eventually

pytestmark = pytest.mark.integration


def test_each_producer_of_a_fleet_is_scraped(local_stack, tmp_path):
    required_binary("prometheus")
    env = local_stack["env"]
    ports = env["PRODUCER_METRICS_PORTS"].split(",")
    assert len(ports) >= 2 and env["PRODUCER_METRICS_PORT"] not in ports  # that one is for a producer run by hand
    config = (local_stack["dir"] / "prometheus" / "prometheus.yml").read_text()
    assert all(f"127.0.0.1:{p}" in config for p in ports)
    prom = Prometheus(env["PROMETHEUS_URL"])
    count = 15
    # METRICS_HOLD_S: each producer waits for a first and a last scrape, so its whole run is seen.
    codes = run_fleet(tmp_path / "run", producers=2, count=count, rate=20, env={**env, "METRICS_HOLD_S": str(HANG_GUARD_S)},
                      run_tag="fleet-metrics", result_timeout_s=HANG_GUARD_S)
    assert codes == [0, 0]
    for i in (0, 1):
        log = (tmp_path / "run" / "producers" / f"fleet-metrics-p{i + 1}" / "producer.log").read_text()
        assert f"metrics on http://127.0.0.1:{ports[i]}/metrics" in log, log[-2000:]

    def per_instance():
        got = {r["metric"]["instance"]: float(r["value"][1])
               for r in prom.query('max_over_time(iot_producer_results_received_total[5m])')}
        mine = {f"127.0.0.1:{p}" for p in ports[:2]}
        return got if mine <= set(got) and all(got[k] >= count for k in mine) else None

    assert eventually(per_instance), prom.query("iot_producer_results_received_total")
