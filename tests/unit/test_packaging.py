"""pyproject.toml names the dependency groups; requirements/<group>.txt pin them (the lock)."""

from __future__ import annotations


import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.support import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (tomllib is 3.11's): pytest requires tomli there
    import tomli as tomllib

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIRES_PYTHON = SpecifierSet(PROJECT["requires-python"])
# Every minor version requires-python promises, up to the newest the project tests (make test-pythons).
PROMISED = [f"3.{minor}" for minor in range(10, 14) if f"3.{minor}" in REQUIRES_PYTHON]
GROUP_FILES = {"core": "requirements/core.txt", "inference": "requirements/inference.txt",
               "stack": "requirements/stack.txt", "analysis": "requirements/analysis.txt",
               "dev": "requirements/dev.txt", "deploy": "requirements-deploy.txt"}


def requirements(name: str) -> list[Requirement]:
    """The requirement lines of one file, without the files it includes (-r)."""
    return [Requirement(line) for line in ((raw.split("#", 1)[0].strip()) for raw in
                                           (ROOT / name).read_text().splitlines())
            if line and not line.startswith("-")]


def pinned(name: str, python: str | None = None) -> dict[str, str]:
    """Package -> pin of one requirements file (-r not followed) for one Python version
    (environment markers evaluated; None: the newest pin of each package)."""
    out = {}
    for req in requirements(name):
        if python is None or req.marker is None or req.marker.evaluate({"python_version": python,
                                                                        "python_full_version": python + ".0"}):
            key = req.name.lower().replace("_", "-")
            if python is None and key in out:
                continue  # the first line is the pin for the newest Pythons (the line after it, older ones)
            out[key] = str(req.specifier)
    return out


def test_requirements_files_name_every_version_pyproject_promises():
    """requires-python >= 3.10 is true: a pin that needs a newer Python has a marker and a
    second pin for the older ones, so that each promised Python gets exactly one pin of each
    package (pip -r refuses two pins of one package on one interpreter)."""
    assert PROMISED and PROMISED[0] == "3.10", PROJECT["requires-python"]
    for path in sorted([ROOT / "requirements-deploy.txt", *(ROOT / "requirements").glob("*.txt")]):
        name = str(path.relative_to(ROOT))
        reqs = requirements(name)
        assert all(str(r.specifier).startswith("==") for r in reqs), name
        for python in PROMISED:
            env = {"python_version": python, "python_full_version": python + ".0"}
            active = [r.name.lower() for r in reqs if r.marker is None or r.marker.evaluate(env)]
            assert len(active) == len(set(active)), (name, python, active)
            assert set(active) == {r.name.lower() for r in reqs}, (name, python)  # no package left out


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


def test_the_embedded_groups_are_the_engines_without_the_http_service():
    """INFERENCE_MODE=embedded: the consumers' VM installs the engine alone (roles/iot_app):
    embedded-tensorflow / embedded-torch are the service's groups (inference, runtime-torch)
    without Flask and Gunicorn, at the same engine pins, and nothing else beside core."""
    for embedded, service, engine in (("embedded-tensorflow", "inference", "tensorflow-cpu"),
                                      ("embedded-torch", "runtime-torch", "torch")):
        group, served = expanded(f"requirements/{embedded}.txt"), expanded(f"requirements/{service}.txt")
        assert pinned(f"requirements/{embedded}.txt") == {engine: served[engine]}, embedded
        assert group == {k: v for k, v in served.items() if k not in ("flask", "gunicorn")}, embedded
