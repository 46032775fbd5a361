"""pyproject.toml names the dependency groups; requirements/<group>.txt pin them (the lock)."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.support import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
GROUP_FILES = {"core": "requirements/core.txt", "inference": "requirements/inference.txt",
               "stack": "requirements/stack.txt", "analysis": "requirements/analysis.txt",
               "dev": "requirements/dev.txt", "deploy": "requirements-deploy.txt"}


def pinned(name: str) -> dict[str, str]:
    """Package -> pin of one requirements file, without the files it includes (-r)."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            m = re.match(r"([A-Za-z0-9_.\-]+)\s*(==\s*\S+)?", line)
            out[m.group(1).lower().replace("_", "-")] = m.group(2) or ""
    return out


@pytest.mark.parametrize("group", GROUP_FILES)
def test_each_group_is_pinned_in_its_own_file(group):
    declared = PROJECT["dependencies"] if group == "core" else PROJECT["optional-dependencies"][group]
    pins = pinned(GROUP_FILES[group])
    assert sorted(d.lower() for d in declared) == sorted(pins), GROUP_FILES[group]
    assert all(pins.values()), f"unpinned in {GROUP_FILES[group]}: {[k for k, v in pins.items() if not v]}"


def expanded(name: str) -> dict[str, str]:
    """pinned(), following -r includes."""
    out = pinned(name)
    for line in (ROOT / name).read_text().splitlines():
        if line.startswith("-r "):
            out.update(expanded(str((ROOT / name).parent.relative_to(ROOT) / line[3:].strip())))
    return out


def test_only_the_inference_vm_and_development_get_tensorflow():
    """The controller and the producer/consumer VMs install no TensorFlow (issue: a Mac
    has no tensorflow-cpu wheel, and it is 600 MB for VMs that do not run the model)."""
    for name in ("requirements-deploy.txt", "requirements/core.txt", "requirements/analysis.txt"):
        assert not [k for k in expanded(name) if k.startswith("tensorflow")], name
    assert "tensorflow-cpu" in expanded("requirements/inference.txt")
    assert "tensorflow-cpu" in expanded("requirements.txt")  # development: everything


def test_the_torch_engine_has_its_own_group_without_tensorflow():
    """MODEL_ENGINE=torch: its own group (the service's Flask and Gunicorn, at the pins of the
    TensorFlow group, and torch; no TensorFlow), installed by make venv (make test runs the
    pipeline with it) and by the deployment where the model runs on torch only (roles/iot_app),
    never by another VM's group or the controller's."""
    torch_group, tf_group = expanded("requirements/runtime-torch.txt"), expanded("requirements/inference.txt")
    assert pinned("requirements/runtime-torch.txt") == {"torch": "==2.13.0", "flask": tf_group["flask"],
                                                       "gunicorn": tf_group["gunicorn"]}
    assert not [k for k in torch_group if k.startswith("tensorflow")]
    assert expanded("requirements.txt")["torch"] == "==2.13.0"
    for name in ("requirements/inference.txt", "requirements/core.txt", "requirements-deploy.txt"):
        assert "torch" not in expanded(name), name
    # make venv takes the CPU build's pin from the same file.
    assert "grep -E '^torch==' requirements/runtime-torch.txt" in (ROOT / "Makefile").read_text()
