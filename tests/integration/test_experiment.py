"""The experiment runner end to end on the local stack, with two small configurations."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_experiment_sweep_writes_runs_and_analysis(local_stack, tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "experiments.experiment", "--producers", "1", "2",
                           "--images", "15", "--rate", "15", "--pause", "0", "--out", str(out)],
                          cwd=ROOT, env=local_stack["env"], capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads((out / "experiment.json").read_text())
    assert record["target"] == "deployed"  # endpoints came from the environment
    assert [r["producers"] for r in record["runs"]] == [1, 2]
    assert record["host"]["cpu_count"] and record["versions"]["kafka-python"]
    assert "untrained" in record["model"]["id"]
    for run, n in zip(record["runs"], (1, 2)):
        summary = json.loads((out / run["dir"] / "summary.json").read_text())
        assert summary["sent"] == 15 * n and summary["lost"] == 0 and summary["producers"] == n
        rows = list(csv.DictReader(open(out / run["dir"] / "latencies.csv")))
        assert len(rows) == 15 * n and len({r["producer_id"] for r in rows}) == n
    percentiles = list(csv.DictReader(open(out / "percentiles.csv")))
    assert [p["run"] for p in percentiles] == ["1-producer", "2-producers"]
    assert all(float(p["p50_ms"]) <= float(p["p95_ms"]) for p in percentiles)
    for png in ("latency_cdf.png", "throughput.png", "stages.png"):
        assert (out / png).stat().st_size > 10_000, png
    assert "| run |" in proc.stdout or "run" in proc.stdout.splitlines()[0]


def test_experiment_without_the_service_url_takes_the_model_from_the_results(local_stack, tmp_path):
    """On the producer VM the experiment has no service URL or token: experiment.json still
    names the model, from the result messages."""
    out = tmp_path / "exp"
    env = {k: v for k, v in local_stack["env"].items() if k not in ("INFERENCE_URL", "INFERENCE_TOKEN")}
    proc = subprocess.run([sys.executable, "-m", "experiments.experiment", "--producers", "1",
                           "--images", "5", "--rate", "10", "--pause", "0", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model = json.loads((out / "experiment.json").read_text())["model"]
    assert model["source"] == "result messages" and "untrained" in model["id"], model


def test_experiment_without_a_rate_measures_the_capacity_first(local_stack, tmp_path):
    """No --rate: a short ramp measures the capacity and brackets the knee, the rate is chosen
    so that the most producers offer 1.15x the knee's load (the capacity where nothing was
    bracketed) and one producer less than it; all of it is in experiment.json, in each
    run's summary and on the figures."""
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "experiments.experiment", "--producers", "1", "2",
                           "--images", "20", "--pause", "0", "--ramp-step-s", "3", "--ramp-start", "20",
                           "--out", str(out)],
                          cwd=ROOT, env=local_stack["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Logging error" not in proc.stderr, proc.stderr[-3000:]  # a log call that cannot format
    record = json.loads((out / "experiment.json").read_text())
    measured, rate = record["capacity"], record["settings"]["rate_per_producer"]
    capacity, knee_between = measured["img_s"], measured["knee_between_img_s"]
    assert capacity > 0 and measured["ramp"] and record["settings"]["rate_from"] == "capacity"
    if knee_between:
        low, high = knee_between
        assert measured["sized_from"] == "knee" and low < measured["sized_from_img_s"] < high
    else:
        assert measured["sized_from"] == "capacity" and measured["sized_from_img_s"] == capacity
    basis = measured["sized_from_img_s"]
    assert rate == round(basis * 1.15 / 2, 2)
    offered = {r["producers"]: r["summary"]["offered_img_s"] for r in record["runs"]}
    assert offered == {1: round(rate, 2), 2: round(2 * rate, 2)}
    assert offered[1] < basis < offered[2]  # light load first, just past the knee last
    for r in record["runs"]:
        assert r["summary"]["capacity_img_s"] == capacity and r["summary"]["lost"] == 0
        assert r["summary"]["ramp_knee_between_img_s"] == knee_between
    if record["knee"] is not None:
        assert record["knee"]["producers"] in offered
    assert (out / "throughput.png").stat().st_size > 10_000


def test_repeated_trials_are_interleaved_settled_and_pooled(local_stack, tmp_path):
    """--repeat 2: each configuration runs twice, 1, 2, 1, 2 producers, each trial in its own
    directory with its settle measured (lag back to zero, every image stored, and the stack's
    CPU: this stack runs here), and each configuration's directory pools its trials."""
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "experiments.experiment", "--producers", "1", "2",
                           "--images", "10", "--rate", "15", "--repeat", "2", "--out", str(out)],
                          cwd=ROOT, env=local_stack["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads((out / "experiment.json").read_text())
    assert record["settings"]["repeat"] == 2 and record["settings"]["order"] == "interleaved"
    assert record["settle_baseline"]["lag"] == 0 and record["settle_baseline"]["idle_cpu_cores"] is not None
    trials = sorted((t for r in record["runs"] for t in r["trials"]), key=lambda t: t["order"])
    assert [t["dir"] for t in trials] == ["1-producer/trial-1", "2-producers/trial-1",
                                         "1-producer/trial-2", "2-producers/trial-2"]
    for t in trials:
        settle = t["settle"]
        assert settle["settled"] and settle["stored"] and settle["lag"] == 0, settle
        assert settle["measured"] == ["store", "consumer lag", "stack CPU"] and settle["settle_s"] >= 0
        assert t["summary"]["lost"] == 0 and (out / t["dir"] / "summary.json").is_file()
    for run, n in zip(record["runs"], (1, 2)):
        pooled = json.loads((out / run["dir"] / "summary.json").read_text())
        assert pooled["sent"] == 2 * 10 * n and pooled["lost"] == 0 and pooled["trials"] == 2
        rows = list(csv.DictReader(open(out / run["dir"] / "latencies.csv")))
        assert len(rows) == 2 * 10 * n and len({r["producer_id"] for r in rows}) == 2 * n
    percentiles = list(csv.DictReader(open(out / "percentiles.csv")))
    assert [p["run"] for p in percentiles] == ["1-producer", "2-producers"]
    assert all(p["trials"] == "2" and p["throughput_ci_low_img_s"] for p in percentiles)
    # what was run, for the report: the store, the dead letters (none), the token in every producer id
    assert record["store"]["kind"] and record["dead_letters"]["count"] == 0
    assert all(record["token"] in pid for t in trials for pid in t["producer_ids"])
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 4 and "http://" not in page


def test_until_ci_adds_rounds_up_to_its_cap_and_says_whether_it_was_met(local_stack, tmp_path):
    """--until-ci: rounds are added (whole rounds: every configuration) until every p95's
    interval is narrow enough, or the cap; an impossible target runs to the cap and says so."""
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "experiments.experiment", "--producers", "1",
                           "--images", "8", "--rate", "15", "--until-ci", "0.001", "--max-repeat", "3",
                           "--out", str(out)],
                          cwd=ROOT, env=local_stack["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    stop = json.loads((out / "experiment.json").read_text())["stopping"]
    assert stop["rounds"] == 3 and stop["met"] is False and stop["until_ci_pct"] == 0.001
    assert stop["p95"]["1-producer"]["width_pct"] >= 0.001
    assert len(json.loads((out / "1-producer" / "trials.json").read_text())["trials"]) == 3
    assert "NOT met after 3 round(s)" in proc.stdout
