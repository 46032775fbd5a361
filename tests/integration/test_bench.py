"""``python -m experiments.bench --smoke``: the benchmark's machinery and output files.

A benchmark is not a test: this checks that the smoke run starts and stops its own
stacks, writes bench.json (with every documented key) and bench.png and prints the
table - never a timing or a ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.bench import BASELINE_ENV
from stack.control import peak_rss

ROOT = Path(__file__).resolve().parents[2]

KEYS = ("limit_batch1_img_s", "limit_best_img_s", "pipeline_max_img_s", "baseline_max_img_s",
        "ratio_to_limit", "ratio_to_baseline", "p99_ms_at_50pct", "machine", "settings",
        "limit", "pipeline", "baseline", "targets", "load_average_start", "load_average_end",
        # docs/PERFORMANCE.md's figures (issue [perf]); p50_25pct_over_batch1 is None in smoke
        "efficiency", "producer_core_ms_per_img", "p50_25pct_over_batch1", "p99_50pct_over_batch1")


def test_baseline_is_batching_off(monkeypatch):
    """The components started with BASELINE_ENV over an environment that batches read batches
    of one image everywhere: the consumer's requests, the service's model calls, the writes."""
    from common.settings import DbWriterSettings, InferenceClientSettings, ServiceSettings

    for name in ("PREDICT_BATCH_IMAGES", "MODEL_BATCH_MAX_IMAGES", "DB_MAX_RECORDS"):
        monkeypatch.setenv(name, "64")
    monkeypatch.setenv("PREDICT_BATCH_WAIT_MS", "50")
    monkeypatch.setenv("MODEL_BATCH_DELAY_MS", "5")
    for name, value in BASELINE_ENV.items():
        monkeypatch.setenv(name, value)
    client, service = InferenceClientSettings(), ServiceSettings()
    assert (client.predict_batch_images, client.predict_batch_wait_ms) == (1, 0)
    assert (service.model_batch_max_images, service.model_batch_delay_ms) == (1, 0)
    assert DbWriterSettings().db_max_records == 1


def test_peak_rss_reads_pid_files(tmp_path):
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "me.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "pids" / "gone.pid").write_text("999999999\n")
    rss = peak_rss(tmp_path)
    assert rss["me"]["peak_rss_mib"] > 1 and rss["me"]["processes"][0]["pid"] == os.getpid()
    assert rss["gone"]["processes"] == []


@pytest.mark.integration
@pytest.mark.parametrize("model", [
    {},
    # The CIFAR ResNet on torch, in the inference consumer: no service, the same figures.
    {"MODEL_ENGINE": "torch", "MODEL": "cifar10_resnet20", "INFERENCE_MODE": "embedded"},
], ids=["resnet50-service", "torch-embedded"])
def test_bench_smoke_writes_files_and_keys(tmp_path, cifar_archive, model):
    if model.get("MODEL_ENGINE") == "torch":
        from tests.binaries import required_module

        required_module("torch")
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGO_URI", "INFERENCE_URL", "STACK_DIR", "MODEL_ENGINE",
                        "MODEL", "INFERENCE_MODE")}
    env.update(DATASET_SOURCE=str(cifar_archive), MODEL_WEIGHTS="random", **model)
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((out / "bench.json").read_text())
    for key in KEYS:
        assert key in result, key
    assert result["smoke"] is True
    embedded = model.get("INFERENCE_MODE") == "embedded"
    assert result["model_engine"] == model.get("MODEL_ENGINE", "tensorflow")
    assert result["inference_mode"] == ("embedded" if embedded else "service")
    assert result["model"] == model.get("MODEL", "resnet50") and result["settings"]["pipeline"]["MODEL"] == result["model"]
    assert result["limit"]["model"].startswith(f"{result['model']}-untrained-32")  # the bare model is the served one
    assert result["efficiency"] > 0 and result["producer_core_ms_per_img"] > 0  # measured, whatever their value
    assert result["p99_50pct_over_batch1"] > 0
    # The store's figures: its process's CPU and the DB writer's batch writes, read from the
    # writer's histogram (experiments/store_writes.py), whatever their value.
    assert result["store"] == "mongodb" and result["broker_storage"] == "memory"
    assert result["store_core_ms_per_img"] > 0
    assert 0 < result["store_write_ms_p50"] <= result["store_write_ms_p99"]
    assert result["pipeline"]["latency"]["50pct"]["store_write_ms"]["writes"] >= 1
    assert (out / "bench.png").stat().st_size > 10_000
    for name in ("pipeline", "baseline"):
        rec = result[name]
        assert rec["ramp"] and "50pct" in rec["latency"]
        components = {"kafka", "mongo", "inference-consumer", "db-consumer"}
        assert components <= set(rec["peak_rss"])
        assert ("inference" in rec["peak_rss"]) is not embedded  # embedded: no service started
        assert rec["latency"]["50pct"]["stored_with_prediction"] == rec["latency"]["50pct"]["sent"]
    # The camera JPEG beside the PNG: every image of both kinds stored with its prediction.
    cost = result["pipeline"]["image_cost"]
    assert cost["png32"]["complete"] and cost["jpeg640"]["complete"]
    assert cost["jpeg640"]["total_core_ms_per_img"] > 0 and result["jpeg640_over_png32"] > 0
    assert "camera JPEG 640x480" in proc.stdout
    assert result["settings"]["baseline"]["PREDICT_BATCH_IMAGES"] == "1"
    assert "ratio_to_limit" in proc.stdout and "peak RSS" in proc.stdout
    # Nothing left running: no process still names a stack directory of the run
    # (the MongoDB server has its database path on its command line).
    dirs = [line.split("(")[-1].rstrip(")") for line in proc.stderr.splitlines()
            if "stack " in line and " up in " in line]
    assert len(dirs) == 2
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(d in text for d in dirs), text
