"""A real Gunicorn (inference/gunicorn.conf.py) on a free port, over a real socket."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common.labels import CIFAR10_CLASSES
from stack.supervisor import child_pids
from common.schema import encode_png
from tests.binaries import required_module
from tests.support import HANG_GUARD_S, eventually
from stack.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


children = child_pids


def maps_mention_tensorflow(pid: int) -> bool:
    return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()


def http(method: str, url: str, body: dict | None = None, timeout: float = 30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def gunicorn(tmp_path):
    with running_gunicorn(tmp_path, {"MODEL_WEIGHTS": "random"}) as started:
        yield started


@contextlib.contextmanager
def running_gunicorn(tmp_path, model_env: dict[str, str]):
    """The real Gunicorn with one worker serving the model of ``model_env``, ready:
    (master process, base URL, log path); stopped after, its workers with it."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux /proc")
    port = free_port()
    env = {**os.environ, "INFERENCE_BIND": f"127.0.0.1:{port}", **model_env,
           "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4", "MODEL_BATCH_MAX_IMAGES": "16",
           "PYTHONPATH": str(ROOT)}
    env.pop("INFERENCE_TOKEN", None)
    log_path = tmp_path / "gunicorn.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "inference/gunicorn.conf.py", "inference:create_app()"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                status, body = http("GET", base + "/readyz", timeout=5)
                if status == 200:
                    break
                assert body["status"] == "loading", body
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            assert time.monotonic() < deadline, "never ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield proc, base, log_path
    finally:
        workers = children(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful stop of master and workers
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", f"worker {pid} left running"


def test_real_gunicorn_serves_and_master_has_no_tensorflow(gunicorn):
    proc, base, log_path = gunicorn
    assert http("GET", base + "/healthz") == (200, {"status": "ok"})
    status, model = http("GET", base + "/v1/model")
    assert status == 200 and model["id"] == "resnet50-untrained-32" and model["untrained"]

    rng = np.random.default_rng(0)
    batch = [{"image_id": f"g{i}", "image": base64.b64encode(
        encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))).decode()} for i in range(20)]
    batch.insert(5, {"image_id": "bad", "image": "%%%"})
    status, body = http("POST", base + "/v1/predict", {"instances": batch}, timeout=120)
    assert status == 200
    assert [p["image_id"] for p in body["predictions"]] == [b["image_id"] for b in batch]
    assert "error" in body["predictions"][5]
    assert all(p["label"] in CIFAR10_CLASSES for i, p in enumerate(body["predictions"]) if i != 5)
    assert http("POST", base + "/v1/predict", {"instances": "x"})[0] == 400

    # The master never imported TensorFlow; the worker did (so the check can fail).
    workers = children(proc.pid)
    assert len(workers) == 1
    assert not maps_mention_tensorflow(proc.pid)
    assert maps_mention_tensorflow(workers[0])

    log_text = log_path.read_text()
    assert "tensorflow imported in master: False; torch imported in master: False" in log_text
    assert "Control socket listening" not in log_text
    assert '"POST /v1/predict HTTP/1.1" 200' in log_text  # access log on stderr


def test_the_clients_predict_files_against_real_gunicorn(gunicorn):
    """InferenceClient.predict_files (multipart) and predict (JSON) through the real Gunicorn:
    the same answers for the same images, per-image errors in place, refusals as BatchRejected."""
    import io

    from PIL import Image

    from common.settings import InferenceClientSettings
    from consumers.inference import BatchRejected, InferenceClient

    _proc, base, _log = gunicorn
    rng = np.random.default_rng(1)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(photo, format="JPEG")
    items = [(f"f{i}", encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "image/png")
             for i in range(6)]
    items.insert(2, ("photo", photo.getvalue(), "image/jpeg"))
    items.insert(4, ("broken", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"))
    client = InferenceClient(InferenceClientSettings(inference_url=base))
    body = client.predict_files(items)
    preds = body["predictions"]
    assert [p["image_id"] for p in preds] == [i for i, _, _ in items]
    assert "error" in preds[4] and all("label" in p for k, p in enumerate(preds) if k != 4)
    as_json = client.predict([{"image_id": i, "image": base64.b64encode(d).decode()} for i, d, _ in items])
    assert [p.get("label") for p in as_json["predictions"]] == [p.get("label") for p in preds]
    with pytest.raises(BatchRejected, match="MAX_REQUEST_IMAGES"):
        client.predict_files(items * 17)  # 136 images, over 128


def test_real_gunicorn_serves_the_torch_engine(tmp_path):
    """MODEL_ENGINE=torch behind the real Gunicorn: a checkpoint in the published format
    served (its hash in the model id and /v1/model), JSON and multipart requests classified,
    and neither the master nor the torch worker imports TensorFlow."""
    required_module("torch")
    from common.settings import InferenceClientSettings
    from consumers.inference import InferenceClient
    from inference.weights import file_sha256
    from tests.checkpoints import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "weights")
    sha = file_sha256(str(checkpoint))
    with running_gunicorn(tmp_path, {"MODEL_ENGINE": "torch", "MODEL_WEIGHTS": str(checkpoint)}) as started:
        proc, base, log_path = started
        status, model = http("GET", base + "/v1/model")
        assert status == 200 and model["id"] == f"cifar10_resnet20-{sha[:8]}-32", model
        assert model["weights_sha256"] == sha and model["input_size"] == 32 and not model["untrained"]
        assert model["classes"] == list(CIFAR10_CLASSES)

        rng = np.random.default_rng(2)
        pngs = [encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(20)]
        batch = [{"image_id": f"t{i}", "image": base64.b64encode(p).decode()} for i, p in enumerate(pngs)]
        status, body = http("POST", base + "/v1/predict", {"instances": batch}, timeout=120)
        assert status == 200 and body["model"] == model["id"]
        assert [p["label"] in CIFAR10_CLASSES for p in body["predictions"]] == [True] * 20
        client = InferenceClient(InferenceClientSettings(inference_url=base))
        as_files = client.predict_files([(f"t{i}", p, "image/png") for i, p in enumerate(pngs)])
        assert [p["label"] for p in as_files["predictions"]] == [p["label"] for p in body["predictions"]]

        (worker,) = children(proc.pid)
        worker_maps = Path(f"/proc/{worker}/maps").read_text()
        assert "libtorch" in worker_maps and "tensorflow" not in worker_maps
        assert not maps_mention_tensorflow(proc.pid) and "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        assert "torch imported in master: False" in log_path.read_text()


def test_gunicorn_config_values_come_from_env(monkeypatch):
    monkeypatch.setenv("INFERENCE_BIND", "127.0.0.1:9")
    monkeypatch.setenv("GUNICORN_WORKERS", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "2")
    monkeypatch.setenv("GUNICORN_TIMEOUT", "77")
    conf = runpy.run_path(str(ROOT / "inference/gunicorn.conf.py"))  # as Gunicorn loads it
    assert conf["bind"] == "127.0.0.1:9" and conf["workers"] == 3 and conf["threads"] == 2
    assert conf["timeout"] == 77 and conf["worker_class"] == "gthread" and conf["preload_app"] is False
    for name in ("INFERENCE_BIND", "GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("GUNICORN_CONTROL_SOCKET", raising=False)
    conf = runpy.run_path(str(ROOT / "inference/gunicorn.conf.py"))
    assert conf["bind"] == "127.0.0.1:8000" and conf["workers"] == 1 and conf["threads"] == 8
    assert conf["control_socket_disable"] is True  # no shared ~/.gunicorn/gunicorn.ctl
    monkeypatch.setenv("GUNICORN_WORKERS", "0")  # validated like every other setting: one line, no traceback
    with pytest.raises(SystemExit, match="inference service: invalid setting: GUNICORN_WORKERS='0'"):
        runpy.run_path(str(ROOT / "inference/gunicorn.conf.py"))
    monkeypatch.setenv("GUNICORN_WORKERS", "1")  # the workers' settings are checked in the master too
    monkeypatch.setenv("MAX_BATCH", "64")
    with pytest.raises(SystemExit, match="MAX_BATCH is no longer read: set MAX_REQUEST_IMAGES instead"):
        runpy.run_path(str(ROOT / "inference/gunicorn.conf.py"))


def test_access_log_when_stderr_is_the_journal():
    """Under systemd (StandardError=journal) stderr is a socket, which open("/dev/stderr")
    refuses (ENXIO) and Gunicorn would exit: the access log goes to "-" there."""
    code = ("import runpy; c = runpy.run_path('inference/gunicorn.conf.py'); print(c['accesslog'])")
    a, b = socket.socketpair()
    with a, b:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=a.fileno(),
                             text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "-"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "/dev/stderr", out.stderr[-2000:]


def test_app_modules_do_not_import_tensorflow():
    """Only the worker's loader thread imports TF; building the app object must not."""
    code = ("import sys, inference, inference.api, inference.serving, inference.batcher, "
            "inference.openapi, inference.imagenet_cifar; from inference.serving import ModelHost; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def metric_value(base: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_metrics_add_up_every_worker_and_survive_a_dead_one(tmp_path):
    """Two Gunicorn workers: /metrics (answered by either) sums both workers' counts
    (multiprocess mode), a SIGKILLed worker's counts stay and its live gauges go
    (child_exit), and the master removes its private metrics directory when it exits."""
    port = free_port()
    env = {**os.environ, "INFERENCE_BIND": f"127.0.0.1:{port}", "MODEL_WEIGHTS": "random",
           "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "MODEL_BATCH_MAX_IMAGES": "8", "PYTHONPATH": str(ROOT)}
    for name in ("INFERENCE_TOKEN", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "inference/gunicorn.conf.py",
                                 "inference:create_app()"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def both_ready():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                return len(children(proc.pid)) == 2 and metric_value(base, "iot_service_model_ready") == 1
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                return False
        assert eventually(both_ready), log_path.read_text()[-3000:]
        rng = np.random.default_rng(1)
        batch = [{"image_id": f"m{i}", "image": base64.b64encode(
            encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))).decode()} for i in range(4)]

        def answered_by() -> set[int]:
            return {int(pid) for pid in re.findall(r'"POST /v1/predict HTTP/1.1" 200 .* pid=<?(\d+)',
                                                   log_path.read_text())}

        # Which worker accepts a connection is the kernel's choice: the worker that answered
        # the first request is stopped (SIGSTOP) while the second is sent, so the other one
        # answers it and both have counts.
        assert http("POST", base + "/v1/predict", {"instances": batch}, timeout=120)[0] == 200
        (first,) = eventually(answered_by)
        os.kill(first, signal.SIGSTOP)
        try:
            assert http("POST", base + "/v1/predict", {"instances": batch}, timeout=120)[0] == 200
        finally:
            os.kill(first, signal.SIGCONT)
        requests_sent = 2
        assert eventually(lambda: len(answered_by()) == 2), answered_by()
        # Whichever worker answers /metrics, it reports both workers' counts.
        for _ in range(6):
            assert metric_value(base, "iot_service_images_total", outcome="predicted") == 4 * requests_sent
            assert metric_value(base, "iot_service_requests_total", handler="/v1/predict",
                                code="200") == requests_sent
        assert metric_value(base, "process_resident_memory_bytes") > 0
        victim = children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert eventually(lambda: victim not in children(proc.pid))
        assert metric_value(base, "iot_service_images_total", outcome="predicted") == 4 * requests_sent
        # child_exit marked it dead: its live gauges' files (queue depth, readiness) are gone.
        metrics_dir = Path(re.search(r"metrics: multiprocess files in (\S+)", log_path.read_text()).group(1))
        assert eventually(lambda: not [p for p in metrics_dir.iterdir()
                                       if "live" in p.name and p.name.endswith(f"_{victim}.db")])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    assert not metrics_dir.exists()

