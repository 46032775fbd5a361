"""Repeated trials (experiments/repeats.py) and the measured settle between them (experiments/settle.py),
without a stack: the trial's run is a stand-in, lag and CPU are scripted, time is skipped."""

from __future__ import annotations

import json

from common.rundir import RunDir
from common.trials import Pool
from experiments import repeats
from experiments.repeats import Trials, config_name, schedule
from experiments.settle import Settler


def test_trials_are_interleaved_round_by_round():
    assert schedule([1, 2, 4], range(1, 4)) == [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4),
                                                (3, 1), (3, 2), (3, 4)]
    assert [config_name(n) for n in (1, 2)] == ["1-producer", "2-producers"]


class Scripted:
    """Readings handed out in order, the last one repeated."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self):
        self.calls += 1
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


class CpuMeter:
    """CPU seconds so far of a stack that keeps ``cores[i]`` cores busy in the i-th window
    measured (the Settler reads it at a window's start and end)."""

    def __init__(self, clock, cores):
        self.clock, self.cores, self.total, self.start = clock, list(cores), 0.0, None

    def __call__(self):
        if self.start is None:
            self.start = self.clock.monotonic()
        else:
            busy = self.cores.pop(0) if len(self.cores) > 1 else self.cores[0]
            self.total += busy * (self.clock.monotonic() - self.start)
            self.start = None
        return self.total


class Clock:
    """Time that moves only when slept."""

    def __init__(self):
        self.now, self.slept = 1000.0, []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self):
        return self.now

    time = monotonic


def settler(lag, cores, **kw):
    clock = Clock()
    cpu = CpuMeter(clock, cores) if cores is not None else None
    return Settler(lag, cpu, clock=clock, **kw), clock


def test_the_settle_waits_for_zero_lag_then_a_quiet_cpu():
    # idle 0.1 cores (the least of three windows), then 1.5 and 0.9 busy, then quiet at 0.2
    s, clock = settler(Scripted([0, 40, 12, 0]), [0.3, 0.1, 0.2, 1.5, 0.9, 0.2])
    assert s.baseline() == {"lag": 0, "idle_cpu_cores": 0.1, "margin_cores": 0.15}
    end = clock.time()
    out = s.wait(end, stored=True)
    assert out["settled"] and out["lag"] == 0 and out["stored"] is True
    assert out["cpu_cores"] == 0.2 and out["idle_cpu_cores"] == 0.1
    assert out["measured"] == ["store", "consumer lag", "stack CPU"]
    # two polls for the lag (0.5 s each) and three CPU windows (1 s each)
    assert clock.slept == [1.0] * 3 + [0.5, 0.5, 1.0, 1.0, 1.0]
    assert out["settle_s"] == round(sum(clock.slept[3:]), 2)


def test_a_pipeline_that_stays_busy_is_recorded_as_not_settled():
    s, clock = settler(Scripted([0, 5]), None, max_s=3.0)
    s.baseline()
    out = s.wait(clock.time(), stored=False)
    assert not out["settled"] and out["still_busy"] == ["consumer lag", "store"]
    assert out["lag"] == 5 and "stack CPU" not in out["measured"]


def test_nothing_measurable_settles_at_once():
    s, clock = settler(lambda: None, None)
    s.baseline()
    out = s.wait(clock.time())
    assert out["settled"] and out["measured"] == [] and clock.slept == []


def test_a_lag_that_cannot_be_read_is_not_fatal():
    def broken():
        raise OSError("broker away")

    s, clock = settler(broken, None)
    assert s.wait(clock.time(), stored=True)["lag"] is None


def fake_run(calls):
    """Writes a trial as run_configuration would: 2 images per producer, 10 ms apart in latency."""
    def run(run_dir, env, *, producers, count, rate, desc, extra=None, run_tag=""):
        calls.append((run_dir.parent.name, run_dir.name, run_tag))
        rows = [{"image_id": f"{run_tag}-{i}", "device_id": "c", "producer_id": f"{run_tag}-p{i % producers + 1}",
                 "seq": i, "sent_at": 100.0 + i, "result_at": 100.0 + i + 0.01 * (i + 1), "e2e_ms": 10.0 * (i + 1),
                 "label": None, "prediction": "cat", "model": "m"} for i in range(2 * producers)]
        run = RunDir.create(run_dir)
        run.write_latencies(rows)
        summary = {"sent": len(rows), "results": len(rows), "stored": len(rows), "stored_with_prediction": len(rows),
                   "lost": 0, "duplicate_documents": 0, "throughput_img_s": 2.0, "result_rate_img_s": 1.0,
                   "producers": producers, "rate": rate, "images_per_producer": count, **(extra or {})}
        run.write_summary(summary)
        return summary
    return run


def test_each_trial_rewrites_its_configuration_pool(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(repeats, "run_configuration", fake_run(calls))
    s, _clock = settler(lambda: 0, None)
    trials = Trials(tmp_path, [1, 2], {}, s, count=2, rate=5.0, extra={"experiment": "e"})
    for round_no, n in schedule([1, 2], range(1, 3)):
        trials.run(round_no, n)
    assert calls == [("1-producer", "trial-1", "1-producer-t1"), ("2-producers", "trial-1", "2-producers-t1"),
                     ("1-producer", "trial-2", "1-producer-t2"), ("2-producers", "trial-2", "2-producers-t2")]
    runs = trials.runs()
    assert [r["dir"] for r in runs] == ["1-producer", "2-producers"]
    two = runs[1]
    assert [t["order"] for t in two["trials"]] == [2, 4] and [t["dir"] for t in two["trials"]] == \
        ["2-producers/trial-1", "2-producers/trial-2"]
    assert two["summary"]["sent"] == 8 and two["summary"]["trials"] == 2 and two["summary"]["offered_img_s"] == 10.0
    assert all(t["settle"]["settled"] for t in two["trials"])
    listed = json.loads((tmp_path / "2-producers" / "trials.json").read_text())["trials"]
    assert [t["producer_ids"] for t in listed] == [["2-producers-t1-p1", "2-producers-t1-p2"],
                                                   ["2-producers-t2-p1", "2-producers-t2-p2"]]
    assert [len(rows) for _t, rows in Pool(tmp_path / "2-producers").trial_rows()] == [4, 4]


def test_the_stopping_rule_reads_the_tables_p95_interval(tmp_path):
    from analysis.intervals import percentile_intervals
    from analysis.runs import load_run
    from tests.support import write_experiment

    steady = [[100.0 + (i % 7) for i in range(60)] for _ in range(3)]
    jumpy = [[100.0 * (1 + k) + (i % 7) for i in range(60)] for k in range(3)]
    out = write_experiment(tmp_path / "e", {1: steady, 2: jumpy})
    widths = repeats.p95_widths(out, ["1-producer", "2-producers"])
    p95 = percentile_intervals(load_run(out / "2-producers").trials(), (95,))[95]
    assert widths["2-producers"] == {"p95_ms": round(p95.estimate, 3), "low_ms": round(p95.low, 3),
                                     "high_ms": round(p95.high, 3),
                                     "width_pct": round(100 * p95.width / p95.estimate, 2)}
    assert widths["1-producer"]["width_pct"] < 10 < widths["2-producers"]["width_pct"]
    assert repeats.stopping_rule({"1-producer": widths["1-producer"]}, 10)
    assert not repeats.stopping_rule(widths, 10)
    assert not repeats.stopping_rule({"x": None}, 10)
