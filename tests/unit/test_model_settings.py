"""MODEL and MODEL_ENGINE together: which network is served, and the combinations refused at
load of the settings (so the Gunicorn master refuses to start), each naming the variables."""

from __future__ import annotations

import pytest

from common.settings import ServiceSettings, SettingsError


def test_the_served_model(monkeypatch):
    assert ServiceSettings().served_model() == "resnet50"
    monkeypatch.setenv("MODEL_ENGINE", "torch")
    assert ServiceSettings().served_model() == "cifar10_resnet20"
    monkeypatch.setenv("DATASET", "cifar100")  # the cameras' dataset chooses the CIFAR-100 network
    assert ServiceSettings().served_model() == "cifar100_resnet20"
    monkeypatch.setenv("MODEL", "cifar10_resnet56")  # unless MODEL is set
    assert ServiceSettings().served_model() == "cifar10_resnet56"
    monkeypatch.setenv("DATASET", "synthetic")
    monkeypatch.delenv("MODEL")
    assert ServiceSettings().served_model() == "cifar10_resnet20"
    monkeypatch.setenv("MODEL_ENGINE", "openvino")
    monkeypatch.setenv("MODEL", "resnet50")
    assert ServiceSettings().served_model() == "resnet50"


@pytest.mark.parametrize("env, fragments", [
    ({"MODEL": "cifar10_resnet20"},
     ["MODEL=cifar10_resnet20 with MODEL_ENGINE=tensorflow", "MODEL_ENGINE=torch only"]),
    ({"MODEL": "cifar100_resnet44", "MODEL_ENGINE": "openvino"}, ["MODEL=cifar100_resnet44 with MODEL_ENGINE=openvino"]),
    ({"MODEL": "resnet50", "MODEL_ENGINE": "torch"}, ["MODEL=resnet50 with MODEL_ENGINE=torch", "cifar10_resnet20"]),
    ({"MODEL_ENGINE": "torch", "MODEL_WEIGHTS": "imagenet"}, ["MODEL_WEIGHTS=imagenet with MODEL_ENGINE=torch"]),
    ({"MODEL_WEIGHTS": "pretrained"}, ["MODEL_WEIGHTS=pretrained with MODEL=resnet50"]),
    ({"MODEL_ENGINE": "torch", "MODEL_INPUT_SIZE": "224"}, ["MODEL_INPUT_SIZE=224 with MODEL_ENGINE=torch", "32"]),
    ({"MODEL_ENGINE": "torch", "MODEL_PRECISION": "bfloat16"}, ["MODEL_PRECISION=bfloat16 with MODEL_ENGINE=torch"]),
    ({"MODEL": "resnet18"}, ["MODEL='resnet18'"]),
])
def test_combinations_that_cannot_serve_are_settings_errors(monkeypatch, env, fragments):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="^invalid setting: ") as caught:
        ServiceSettings()
    assert all(f in str(caught.value) for f in fragments), str(caught.value)


def test_the_torch_engine_takes_its_weights_values(monkeypatch):
    monkeypatch.setenv("MODEL_ENGINE", "torch")
    for weights in ("auto", "pretrained", "random", "/some/file.pt"):
        monkeypatch.setenv("MODEL_WEIGHTS", weights)
        assert ServiceSettings().model_weights == weights
    monkeypatch.setenv("MODEL_INPUT_SIZE", "32")
    assert ServiceSettings().model_input_size == 32


def test_the_gunicorn_master_refuses_a_model_its_engine_cannot_run(monkeypatch):
    """Checked in the master (inference/gunicorn.conf.py) before any worker is forked."""
    import runpy
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "inference" / "gunicorn.conf.py"
    monkeypatch.setenv("MODEL", "cifar10_resnet32")
    monkeypatch.setenv("MODEL_ENGINE", "openvino")
    with pytest.raises(SystemExit, match="invalid setting: MODEL=cifar10_resnet32 with MODEL_ENGINE=openvino"):
        runpy.run_path(str(conf))
