"""make test-containers-torch: the Dockerfile's inference-torch target built on the debootstrap
base from the local wheelhouse (PyTorch's CPU wheel among it), then run two ways: as the
service (Gunicorn on the host network with random weights; /v1/model says a 32 px CIFAR model,
/v1/predict answers CIFAR PNGs through the consumers' own client, with the bearer token) and as
the inference consumer's image with INFERENCE_MODE=embedded (the model in the consumer's
process answers a PNG, and neither Flask nor Gunicorn is imported).  Its size is logged
(docs/PERFORMANCE.md records it).  The image is removed after; the engine's layer cache stays.

Opt-in (minutes, root, a Docker engine): marked ``containers`` and ``torch_image``, so that
neither ``make test`` nor ``make test-containers`` (hence not .ci/run) runs it.  Hang guards
only; nothing is timed.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from common.labels import CIFAR10_CLASSES
from common.settings import InferenceClientSettings
from consumers.predict_client import InferenceClient, ServiceUnavailable
from stack.ports import free_port
from tests.containers import images
from tests.rehearsal import docker
from tests.support import ROOT, eventually

pytestmark = [pytest.mark.containers, pytest.mark.torch_image]
log = logging.getLogger("containers.torch")

TARGET = "inference-torch"
SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-python-sample.tar.gz"
IMAGES = 8


@pytest.fixture(scope="module")
def image(engine):
    name = images.build_images(tag="test", targets=(TARGET,))[TARGET]
    size = int(docker.docker("image", "inspect", "-f", "{{.Size}}", name).stdout.strip())
    log.warning("%s: %d bytes (%.0f MB)", name, size, size / 1e6)  # docs/PERFORMANCE.md
    yield name
    docker.docker("rmi", name, check=False, timeout=120)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """A few CIFAR-10 test images as PNG files (the sample archive, else a generated one)."""
    from common import dataset

    source = SAMPLE
    if not source.is_file():
        from tests.support import make_cifar_archive
        source = make_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz")
    data = dataset.load("cifar10", str(source), limit=IMAGES)
    return [(f"img-{i}", data.encoded(i)[0], "image/png") for i in range(IMAGES)]


def test_the_image_has_torch_cpu_and_no_tensorflow(image):
    probe = ("import importlib.metadata as m, importlib.util as u, json, os, torch; "
             "print(json.dumps({'uid': os.getuid(), 'torch': torch.__version__, "
             "'tensorflow': u.find_spec('tensorflow') is not None, "
             "'nvidia': sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].startswith('nvidia'))}))")
    out = docker.docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe,
                        timeout=300).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {**seen, "uid": 10001, "tensorflow": False, "nvidia": []}, seen
    assert seen["torch"].startswith("2.13.0") and "+cpu" in seen["torch"], seen


def test_the_service_serves_a_32_px_cifar_model(image, pngs):
    port, token = free_port(), uuid.uuid4().hex
    name = f"iotc-torch-{uuid.uuid4().hex[:8]}"
    docker.docker("run", "-d", "--name", name, "--network", "host", "--label", images.LABEL,
                  "-e", f"INFERENCE_BIND=127.0.0.1:{port}", "-e", "MODEL_WEIGHTS=random",
                  "-e", f"INFERENCE_TOKEN={token}", "-e", "GUNICORN_WORKERS=1", image)
    try:
        url = f"http://127.0.0.1:{port}"
        client = InferenceClient(InferenceClientSettings(inference_url=url, inference_token=token))

        def model():
            try:
                return client.model_info(url)
            except ServiceUnavailable:  # loading: 503, or not listening yet
                state = docker.docker("inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
                return {"container": state} if state != "running" else None

        info = eventually(model, step_s=1)
        logs = docker.docker("logs", "--tail", "60", name, check=False)
        assert info and "container" not in info, (info, (logs.stdout + logs.stderr)[-4000:])
        assert info["input_size"] == 32 and info["id"].startswith("cifar10_resnet20"), info
        assert info["classes"] == list(CIFAR10_CLASSES) and info["untrained"] is True, info
        body = client.predict_files(pngs)
        assert [p["image_id"] for p in body["predictions"]] == [i for i, _, _ in pngs], body
        assert all(p["label"] in CIFAR10_CLASSES for p in body["predictions"]), body
        # and the token is required
        stranger = InferenceClient(InferenceClientSettings(inference_url=url, inference_token=uuid.uuid4().hex))  # not the token
        with pytest.raises(ServiceUnavailable) as refused:
            stranger.predict_files(pngs[:1])
        assert refused.value.status == 401, refused.value
    finally:
        docker.docker("rm", "-f", name, check=False, timeout=120)


EMBEDDED = """
import json, sys
from common.settings import InferenceClientSettings
from consumers.embedded import embedded_client
client = embedded_client(InferenceClientSettings(inference_mode="embedded"))
assert client.model_host.wait_ready(300), client.model_host.error
body = client.predict_files([("a", sys.stdin.buffer.read(), "image/png")])
print(json.dumps({"label": body["predictions"][0]["label"], "info": client.model_info(),
                  "servers": sorted({m.split(".")[0] for m in sys.modules} & {"flask", "werkzeug", "gunicorn"})}))
"""


def test_the_image_runs_the_inference_consumer_embedded(image, pngs):
    """INFERENCE_MODE=embedded from this image (Compose's deploy/compose/embedded.yaml, the
    local-torch-embedded overlay): the consumer's code and packages are in it, its model answers,
    and no HTTP server stack is loaded."""
    proc = docker.docker("run", "--rm", "-i", "--network", "none", "-e", "INFERENCE_MODE=embedded",
                         "-e", "MODEL_WEIGHTS=random", "--entrypoint", "python", image, "-c", EMBEDDED,
                         input=pngs[0][1], timeout=600)
    seen = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert seen["servers"] == [] and seen["label"] in CIFAR10_CLASSES, seen
    assert seen["info"]["input_size"] == 32, seen
