"""The pipeline end to end with MODEL_ENGINE=torch: the real embedded stack (broker, MongoDB
wire server, Gunicorn serving a CIFAR ResNet from a checkpoint in the published format,
both consumers) and a producer sending the CIFAR-10 images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analysis.summary import close_run
from common.labels import CIFAR10_CLASSES
from common.settings import MongoSettings
from tests.binaries import required_module
from tests.checkpoints import write_checkpoint
from tests.conftest import running_stack
from tests.support import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def torch_stack(tmp_path_factory, cifar_archive):
    """The stack with MODEL_ENGINE=torch and MODEL_WEIGHTS=<a generated checkpoint>, for
    this module only (the session's local_stack serves the TensorFlow model)."""
    required_module("torch")
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("weights"))
    env = {"MODEL_ENGINE": "torch", "MODEL_WEIGHTS": str(checkpoint), "GUNICORN_WORKERS": "1",
           "DATASET_SOURCE": str(cifar_archive), "PREDICT_BATCH_WAIT_MS": "20",
           "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0"}
    for stack in running_stack(tmp_path_factory.mktemp("torch-stack"), env):
        yield {**stack, "checkpoint": checkpoint}


def test_every_image_is_classified_by_the_torch_engine_and_stored(torch_stack, tmp_path):
    from common.store import open_reader
    from inference.weights import file_sha256
    from tests.support import mongo_connect, mongo_images

    env = torch_stack["env"]
    model_id = f"cifar10_resnet20-{file_sha256(str(torch_stack['checkpoint']))[:8]}-32"
    proc = subprocess.run([sys.executable, "-m", "producer", "--out", str(tmp_path), "--no-progress",
                           "--result-timeout", str(HANG_GUARD_S), "--count", "48", "--rate", "40",
                           "--devices", "2", "--producer-id", "it-torch"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2 * HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mongo = MongoSettings(mongo_uri=env["MONGO_URI"])
    summary = close_run(tmp_path, open_reader(mongo), timeout_s=HANG_GUARD_S)
    assert summary["sent"] == 48 and summary["results"] == 48 and summary["lost"] == 0
    assert summary["stored_with_prediction"] == 48 and summary["duplicate_documents"] == 0
    assert summary["model"] == model_id and summary["untrained_model"] is False

    docs = list(mongo_images(mongo_connect(mongo), mongo).find({"producer_id": "it-torch"}))
    assert len(docs) == 48 and len({d["_id"] for d in docs}) == 48
    for doc in docs:
        assert doc["model"] == model_id and doc["prediction"] in CIFAR10_CLASSES
        assert 0 <= doc["confidence"] <= 1 and doc["label"] in CIFAR10_CLASSES  # the real CIFAR-10 images
        assert doc["received_at"] <= doc["inferred_at"] <= doc["published_at"]
    # The service's worker runs torch and never loaded TensorFlow.
    from stack.supervisor import child_pids

    workers = child_pids(torch_stack["stack"].pid("inference"))
    maps = [Path(f"/proc/{pid}/maps").read_text() for pid in workers]
    assert maps and all("libtorch" in m and "tensorflow" not in m for m in maps)


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory, cifar_archive):
    """The stack with INFERENCE_MODE=embedded: the inference consumer runs the torch model
    itself, and the supervisor starts no inference service."""
    required_module("torch")
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("weights"), seed=3)
    env = {"INFERENCE_MODE": "embedded", "MODEL_ENGINE": "torch", "MODEL_WEIGHTS": str(checkpoint),
           "GUNICORN_WORKERS": "1", "DATASET_SOURCE": str(cifar_archive), "PREDICT_BATCH_WAIT_MS": "20",
           "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0"}
    for stack in running_stack(tmp_path_factory.mktemp("embedded-stack"), env):
        yield {**stack, "checkpoint": checkpoint}


def test_the_embedded_mode_classifies_every_image_in_the_consumer(embedded_stack, tmp_path):
    from common.store import open_reader
    from inference.weights import file_sha256

    env = embedded_stack["env"]
    model_id = f"cifar10_resnet20-{file_sha256(str(embedded_stack['checkpoint']))[:8]}-32"
    proc = subprocess.run([sys.executable, "-m", "producer", "--out", str(tmp_path), "--no-progress",
                           "--result-timeout", str(HANG_GUARD_S), "--count", "40", "--rate", "40",
                           "--devices", "2", "--producer-id", "it-embedded"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2 * HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = close_run(tmp_path, open_reader(MongoSettings(mongo_uri=env["MONGO_URI"])), timeout_s=HANG_GUARD_S)
    assert summary["sent"] == 40 and summary["stored_with_prediction"] == 40 and summary["lost"] == 0
    assert summary["model"] == model_id
    stack = embedded_stack["stack"]
    consumer_maps = Path(f"/proc/{stack.pid('inference-consumer')}/maps").read_text()
    assert "libtorch" in consumer_maps  # the model ran in the consumer
    # No Gunicorn: nothing of the stack would call it.
    assert stack.pid("inference") is None and "INFERENCE_URL" not in env
    assert not (stack.dir / "logs" / "inference.log").exists()
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in stack.processes()
                if Path(f"/proc/{pid}/cmdline").exists()]
    assert cmdlines and not [c for c in cmdlines if b"gunicorn" in c]
