"""The deployment from the controller's side, without a cloud: what is shipped, what the
controller and the VMs install, and the playbook fixes that a first run on Chameleon
needs (docs/DEPLOY.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile

import pytest
import yaml

from tests.pins import pins_for
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bundle  # noqa: E402

ROLE_TASKS = sorted((ROOT / "roles").glob("*/tasks/*.yml"))


# ----------------------------------------------------------------------- the code bundle

def _project(tmp_path):
    """A checkout with the project's layout and the things a user keeps lying around."""
    for pkg in bundle.PACKAGES:
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text(f"# {pkg}\n")
        (tmp_path / pkg / "__pycache__").mkdir()
        (tmp_path / pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "core.txt").write_text("numpy==2.4.6\n")
    # The one-off cost studies sit beside the product in the checkout; not shipped.
    (tmp_path / "bench").mkdir()
    for f in ("__init__.py", "decode_cost.py", "README.md"):
        (tmp_path / "bench" / f).write_text(f"# {f}\n")
    for f in ("pyproject.toml", "requirements.txt", "requirements-deploy.txt", "README.md"):
        (tmp_path / f).write_text(f"{f}\n")
    # pouchdb-server for the local stack's CouchDB (make pouchdb-server): not shipped either.
    for f in ("pouchdb/package.json", "pouchdb/node_modules/pouchdb-server/package.json"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}\n")
    secrets = ["clouds.yaml", "inventory/group_vars/all/vault.yml", "inventory/group_vars/all/local.yml",
               ".deploy/iot-pipeline/pki/ca.key", ".venv/bin/python", "results/run/latencies.csv",
               ".git/config", "notes.vault", ".env"]
    for f in secrets:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("secret\n")
    return secrets


def test_the_bundle_holds_the_project_and_nothing_else(tmp_path):
    secrets = _project(tmp_path / "p")
    out = tmp_path / "b.tar.gz"
    bundle.main(["--root", str(tmp_path / "p"), "--out", str(out)])
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {f"{pkg}/__init__.py" for pkg in bundle.PACKAGES} <= names
    assert {"pyproject.toml", "requirements/core.txt", "requirements-deploy.txt"} <= names
    assert not names & set(secrets), names & set(secrets)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "bench" not in bundle.PACKAGES and not [n for n in names if n.split("/")[0] == "bench"]
    assert not [n for n in names if n.split("/")[0] == "pouchdb" or "node_modules" in n]


def test_the_bundle_is_reproducible_and_works_without_git(tmp_path, capsys):
    _project(tmp_path / "p")
    out = tmp_path / "b.tar.gz"
    bundle.main(["--root", str(tmp_path / "p"), "--out", str(out)])
    first = out.read_bytes()
    bundle.main(["--root", str(tmp_path / "p"), "--out", str(out)])
    assert out.read_bytes() == first
    assert capsys.readouterr().out.split("\n")[1].endswith(" unchanged")
    (tmp_path / "p" / "common" / "__init__.py").write_text("# changed\n")
    bundle.main(["--root", str(tmp_path / "p"), "--out", str(out)])
    assert out.read_bytes() != first and capsys.readouterr().out.strip().endswith(" changed")


# ----------------------------------------------------------------------- what is installed where

def _pip_resolves(requirements: str, python: str, *args: str, drop=frozenset()) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
        pins.write(pins_for(requirements, python, drop) + "\n")
        pins.flush()
        return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                               "--only-binary=:all:", "--target", "/nonexistent-target", "--python-version", python,
                               "-r", pins.name, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0 and re.search(r"(Network is unreachable|Temporary failure in name resolution|"
                                          r"Max retries exceeded|ProxyError)", proc.stderr):
        pytest.skip(f"PyPI not reachable to resolve {what}")
    assert proc.returncode == 0, f"{what}:\n{proc.stderr[-3000:]}"


LINUX_X86_64 = ("manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
# pip takes --platform tags literally (an older macOS or glibc tag is not implied).
MAC_ARM64 = tuple(f"macosx_{v}_0_arm64" for v in (11, 12, 13, 14))
MAC_X86_64 = ("macosx_10_9_x86_64", "macosx_10_12_x86_64", "macosx_10_13_x86_64", "macosx_10_15_x86_64",
              "macosx_11_0_x86_64", "macosx_12_0_x86_64", "macosx_13_0_x86_64")


def _platforms(tags) -> list[str]:
    return [a for tag in tags for a in ("--platform", tag)]


# 3.11: the pins of every Python >= 3.11; 3.10 (the oldest requires-python promises, its fallback
# pins: ansible-core 2.17) on Linux, whose distributions ship it (a Mac's python3 is Homebrew's or
# python.org's, newer).
@pytest.mark.parametrize("name, tags, python", [("macOS arm64", MAC_ARM64, "3.11"), ("macOS x86_64", MAC_X86_64, "3.11"),
                                                ("Linux x86_64", LINUX_X86_64, "3.11"),
                                                ("Linux x86_64", LINUX_X86_64, "3.10")])
def test_the_controller_requirements_install_as_wheels_on_macs_and_linux(name, tags, python):
    """No TensorFlow and nothing to compile on the laptop: Apple silicon and Intel Macs too."""
    _check(_pip_resolves("requirements-deploy.txt", python, *_platforms(tags)),
           f"requirements-deploy.txt on {name}, CPython {python}")


def test_development_requirements_resolve_on_the_oldest_promised_python():
    """make venv on Ubuntu 22.04's python3 (3.10, pyproject's requires-python >= 3.10): every pin of
    requirements.txt has a release for it (make test-pythons installs and unit-tests it for real)."""
    # torch comes from PyTorch's CPU index first (make venv); PyPI's is the CUDA build, whose
    # nvidia-* wheels carry manylinux tags beyond LINUX_X86_64's.
    _check(_pip_resolves("requirements.txt", "3.10", *_platforms(LINUX_X86_64), drop={"torch"}),
           "requirements.txt for CPython 3.10")


# The images' own python3 (base_image_facts): 22.04's 3.10, Debian 12's 3.11 (the rehearsal), 24.04's 3.12.
IMAGE_PYTHONS = ["3.10", "3.11", "3.12"]


@pytest.mark.parametrize("python", IMAGE_PYTHONS)
# core alone is not resolved: both groups include it (-r core.txt), and a set of pins that resolves
# with more pins beside it resolves on its own (each check is a minute of PyPI).
@pytest.mark.parametrize("group", ["inference", "analysis"])
def test_each_vm_group_installs_as_wheels_on_every_image(group, python):
    """Each image's own python3 (22.04's 3.10 with the requirement files' fallback pins)."""
    _check(_pip_resolves(f"requirements/{group}.txt", python, *_platforms(LINUX_X86_64)),
           f"requirements/{group}.txt for CPython {python}")


def test_the_interpreter_is_each_images_own_python3():
    """Not Ubuntu 22.04's python3.11 (a release candidate, 3.11.0~rc1, with pip 22.0)."""
    defaults = yaml.safe_load((ROOT / "roles/iot_app/defaults/main.yml").read_text())
    assert defaults["iot_app_python"] == "python3"
    assert defaults["iot_app_packages"].startswith("{{ [iot_app_python, iot_app_python ~ '-venv']")
    vars_ = (ROOT / "roles/iot_app/vars/main.yml").read_text()
    # the model's engine only where the model runs (test_deploy.py renders every case)
    assert "iot_app_model_hosts_group in group_names" in vars_


def test_the_virtualenv_gets_a_recent_pip_and_is_remade_for_another_python():
    tasks = yaml.safe_load((ROOT / "roles/iot_app/tasks/main.yml").read_text())
    names = [t["name"] for t in tasks]
    pip_tasks = [t for t in tasks if "ansible.builtin.pip" in t]
    assert pip_tasks[0]["ansible.builtin.pip"]["name"] == "pip>={{ iot_app_pip_minimum }}"
    assert names.index(pip_tasks[0]["name"]) < names.index(pip_tasks[1]["name"])  # before the requirements
    for task in pip_tasks:  # one interpreter; one index but for PyTorch's CPU build, from its own
        assert task["ansible.builtin.pip"]["virtualenv_command"] == "{{ iot_app_python }} -m venv"
        if "iot_app_torch_index_url" not in task["ansible.builtin.pip"]["extra_args"]:
            assert task["ansible.builtin.pip"]["extra_args"] == "{{ iot_app_pip_index_args | join(' ') or omit }}"
    minimum = yaml.safe_load((ROOT / "roles/iot_app/defaults/main.yml").read_text())["iot_app_pip_minimum"]
    assert max(_version(f["pip"]) for f in _images().values()) <= _version(minimum)
    remove = next(t for t in tasks if t["name"] == "Remove a virtualenv made with another Python")
    assert remove["ansible.builtin.file"] == {"path": "{{ iot_app_venv }}", "state": "absent"}
    assert "iot_app_venv_lib.stat.exists" in remove["when"]


# ----------------------------------------------------------------------- playbook fixes

def _tasks(node):
    """Every task dict in a task file, blocks included."""
    for task in node or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key))


def test_every_apt_task_waits_for_the_dpkg_lock():
    """unattended-upgrades holds dpkg on a VM's first boot."""
    apt = [(f, t["name"]) for f in ROLE_TASKS for t in _tasks(yaml.safe_load(f.read_text()))
           if "ansible.builtin.apt" in t and "lock_timeout" not in t["ansible.builtin.apt"]]
    assert not apt, apt


def test_no_controller_artefact_under_the_inventory():
    """The inventory folder is an inventory source: Ansible tried to parse every file in it."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "roles").rglob("*.yml")
                 if "inventory/generated" in p.read_text()]
    assert not offenders, offenders
    cfg = (ROOT / "ansible.cfg").read_text()
    assert re.search(r"^inventory = inventory/,\.deploy/hosts\.yml$", cfg, re.M)


def test_the_experiment_results_come_back_even_when_images_were_lost():
    tasks = yaml.safe_load((ROOT / "roles/experiment/tasks/main.yml").read_text())
    block = next(t for t in tasks if "block" in t)
    run = block["block"][0]
    assert "experiments.experiment" in run["ansible.builtin.command"]["argv"]
    assert "not in [0, 1]" in run["failed_when"]  # 1 = lost images: reported, not fatal
    always = [t["name"] for t in block["always"]]
    assert any("Fetch" in n for n in always) and any("Unpack" in n for n in always)
    unpack = next(t for t in block["always"] if "Unpack" in t["name"])
    # not the unarchive module (BSD tar on a Mac controller), nor tarfile without a filter
    assert unpack["ansible.builtin.command"]["argv"][1:3] == ["-m", "common.untar"]
    assert unpack["ansible.builtin.command"]["chdir"] == "{{ experiment_local_project_dir }}"


def test_vault_and_local_settings_files_are_ones_ansible_reads():
    """Ansible reads only .yml/.yaml/.json in group_vars: *.vault files were silently ignored."""
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "vault.yml" in gitignore and "inventory/group_vars/all/local.yml" in gitignore
    for doc in ("docs/DEPLOY.md", "inventory/group_vars/all/main.yml"):
        text = (ROOT / doc).read_text()
        assert not re.search(r"name it \*?\.vault|\*\.vault\)", text), doc


def test_make_deploy_installs_only_the_controller_requirements():
    """make deploy used to install requirements.txt, TensorFlow included (no wheel on Macs)."""
    make = (ROOT / "Makefile").read_text()
    deploy = re.search(r"^deploy: (.*)\n\t(.*)$", make, re.M)
    assert deploy.group(1).startswith("deploy-venv") and deploy.group(2).startswith("$(DEPLOY_VENV)/bin/ansible-playbook")
    recipe = re.search(r"^\$\(DEPLOY_STAMP\):.*\n((?:\t.*\n)+)", make, re.M).group(1)
    installs = re.findall(r"pip install .*", recipe)
    assert installs[-1].endswith("-r requirements-deploy.txt") and "requirements.txt " not in recipe


def test_trained_weights_are_shipped_and_checked():
    tasks = [t["name"] for t in _tasks(yaml.safe_load((ROOT / "roles/inference/tasks/main.yml").read_text()))]
    assert "Copy the weights file from the controller" in tasks and "Compare the weights' checksum" in tasks
    vars_ = (ROOT / "roles/inference/vars/main.yml").read_text()
    assert "'MODEL_WEIGHTS': (inference_model_weights_file | trim) or inference_model_weights" in vars_
    assert "inference_model_weights_src is abs" in vars_  # a relative path is from the project root


SECRET_VARS = re.compile(r"password|token|secret|mongo_uri|_environment\b", re.I)


def test_every_task_that_renders_a_secret_hides_it_from_the_log():
    """--diff and -v print a template's content: an env file with INFERENCE_TOKEN or the
    MongoDB password must be written with no_log."""
    missing = []
    for f in ROLE_TASKS:
        role = f.parts[-3]
        for task in _tasks(yaml.safe_load(f.read_text())):
            tpl = task.get("ansible.builtin.template")
            if not tpl:
                continue
            src = ROOT / "roles" / role / "templates" / tpl["src"]
            jinja = " ".join(re.findall(r"\{[{%].*?[%}]\}", src.read_text(), re.S)) if src.is_file() else ""
            if SECRET_VARS.search(jinja) and not task.get("no_log"):
                missing.append(f"{f.relative_to(ROOT)}: {task['name']}")
    assert not missing, missing


# What a module needs on the VM (its documented requirements): the package must be in the
# base role's list (installed first, on every VM) or installed by the same role.
MODULE_NEEDS = {
    "ansible.builtin.apt": "python3-apt",
    "ansible.builtin.apt_repository": "python3-apt",
    "ansible.builtin.deb822_repository": "python3-debian",
    "community.general.ufw": "ufw",
    "ansible.builtin.unarchive": "tar",
}


def test_the_vms_have_what_each_module_needs():
    """deb822_repository (Grafana's repository) failed on the VM: python3-debian was missing."""
    base = yaml.safe_load((ROOT / "roles/base/defaults/main.yml").read_text())["base_packages"]
    missing = []
    for f in ROLE_TASKS:
        role = f.parts[-3]
        if role in ("provision", "k8s"):  # the controller's modules; k8s installs what it needs itself
            continue
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text()) or {}
        own = {str(v) for value in defaults.values() if isinstance(value, list) for v in value}
        for task in _tasks(yaml.safe_load(f.read_text())):
            for module, package in MODULE_NEEDS.items():
                if module in task and package not in base and package not in own:
                    missing.append(f"{f.relative_to(ROOT)}: {task['name']} ({module}) needs {package}")
    assert not missing, missing


def test_the_operator_address_is_asked_for_in_ipv4():
    """ifconfig.me answers with the IPv6 address on a dual-stack network: provisioning then
    refused it (or the rule would not match the IPv4 floating IP's traffic)."""
    deploy = (ROOT / "docs/DEPLOY.md").read_text()
    commands = re.findall(r"^curl .*ifconfig\.me.*$", deploy, re.M)
    assert commands and all(" -4 " in c for c in commands), commands
    tasks = yaml.safe_load((ROOT / "roles/provision/tasks/main.yml").read_text())
    check = next(t for t in tasks if t["name"] == "Check the provisioning settings")
    assert "IPv4" in check["ansible.builtin.assert"]["fail_msg"] and "curl -4" in check["ansible.builtin.assert"]["fail_msg"]


# Variables named in the docs are the ones the deployment reads.
VAR_PREFIXES = ("provision", "iot", "vault", "kafka", "mongodb", "monitoring", "inference", "consumers", "producer",
                "experiment", "base", "k8s")


def _defined_names() -> set[str]:
    files = [*ROOT.glob("roles/*/defaults/main.yml"), *ROOT.glob("roles/*/vars/main.yml"),
             ROOT / "inventory/group_vars/all/main.yml", ROOT / "inventory/group_vars/all/vault.yml.example"]
    names = set()
    for f in files:
        names |= set(yaml.safe_load(f.read_text()) or {})
    for f in ROLE_TASKS:  # facts the roles set (monitoring_failure ...)
        for task in _tasks(yaml.safe_load(f.read_text())):
            names |= set(task.get("ansible.builtin.set_fact") or {})
    for f in [ROOT / "playbook_master.yaml", *ROOT.glob("playbooks/*.yaml")]:  # tags
        for play in yaml.safe_load(f.read_text()) or []:
            names |= set(play.get("tags") or [])
    return names


def test_every_variable_deploy_md_names_exists():
    """DEPLOY.md listed vault_kafka_app_password, which nothing reads (one password per
    Kafka client user replaced it)."""
    text = (ROOT / "docs/DEPLOY.md").read_text()
    named = set(re.findall(r"`(?:[^`]*?[^a-z0-9_])?((?:%s)_[a-z0-9_]+)" % "|".join(VAR_PREFIXES), text))
    assert len(named) > 30, sorted(named)
    not_variables = {"iot_image_data"}  # PostgreSQL's table (common.wire), named beside the role
    stale = sorted(named - _defined_names() - not_variables)
    assert not stale, f"docs/DEPLOY.md names variables nothing defines: {stale}"


def test_the_kafka_archive_is_checked_against_a_pinned_sha512():
    """The archive was verified against the .sha512 read from the same mirror: whoever could
    change the one could change the other."""
    defaults = yaml.safe_load((ROOT / "roles/kafka/defaults/main.yml").read_text())
    pinned = yaml.safe_load((ROOT / "roles/kafka/vars/main.yml").read_text())["kafka_pinned_sha512"]
    key = f"{defaults['kafka_scala_version']}-{defaults['kafka_version']}"
    assert re.fullmatch(r"[0-9a-f]{128}", pinned[key]), pinned
    install = (ROOT / "roles/kafka/tasks/install.yml").read_text()
    assert ".sha512" not in re.sub(r"#.*|fail_msg:[^\n]*(\n +[^\n-][^\n]*)*", "", install)  # no fetch of it
    tasks = yaml.safe_load(install)
    download = next(t for t in tasks if "ansible.builtin.get_url" in t)
    assert download["ansible.builtin.get_url"]["checksum"] == "sha512:{{ kafka_expected_sha512 }}"
    assert not [t for t in tasks if "ansible.builtin.uri" in t]


def test_no_secret_is_ever_on_a_command_line():
    """A process's arguments are readable by every user of the host (ps, /proc/<pid>/cmdline):
    the Kafka admin's SCRAM password was an argument of kafka-storage.sh format, the clients'
    of kafka-configs.sh.  Secrets go through files or the environment."""
    secret = re.compile(r"password|secret|token", re.I)
    offenders = []
    for f in ROLE_TASKS:
        tasks = list(_tasks(yaml.safe_load(f.read_text())))
        for task in tasks:
            for module in ("ansible.builtin.command", "ansible.builtin.shell"):
                args = task.get(module)
                if args is None:
                    continue
                line = json.dumps(args.get("argv", args.get("cmd")) if isinstance(args, dict) else args)
                # what the command line is made of: its own text and the vars it names (block vars too)
                names = set(re.findall(r"[a-z_][a-z0-9_.]*", " ".join(re.findall(r"\{\{(.*?)\}\}", line))))
                block_vars = {k: v for t in tasks if task in t.get("block", []) for k, v in (t.get("vars") or {}).items()}
                expanded = line + " " + " ".join(json.dumps(block_vars.get(n.split(".")[0], ""))
                                                 for n in names) + " " + json.dumps(task.get("vars") or {})
                if secret.search(" ".join(re.findall(r"\{\{(.*?)\}\}", expanded))):
                    offenders.append(f"{f.relative_to(ROOT)}: {task['name']}")
    assert not offenders, offenders


# ----------------------------------------------------------------------- the supported images

def _images() -> dict:
    return yaml.safe_load((ROOT / "roles/base/vars/main.yml").read_text())["base_image_facts"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:2])


def test_both_chameleon_ubuntu_images_are_supported_and_the_default_is_one():
    images = _images()
    assert {f["image"] for f in images.values()} >= {"CC-Ubuntu22.04", "CC-Ubuntu24.04"}
    provision = yaml.safe_load((ROOT / "roles/provision/defaults/main.yml").read_text())
    assert provision["provision_image"] in {f["image"] for f in images.values()}
    for release, facts in images.items():
        missing = {"image", "python3", "iot_app_python", "iot_app_python_version", "pip", "prometheus", "grafana",
                   "mongodb_org", "postgresql", "python3_debian", "openjdk_17", "workarounds"} - set(facts)
        assert not missing, (release, missing)
    # base refuses another image, with the supported ones in its message
    base = yaml.safe_load((ROOT / "roles/base/tasks/main.yml").read_text())
    assert base[0]["ansible.builtin.assert"]["that"] == "ansible_facts['distribution_release'] | default('') in base_image_facts"


def test_each_image_gets_an_interpreter_the_code_and_its_wheels_support():
    """iot_app_python is python3 on every image: the version it gets must satisfy pyproject's
    requires-python and be one the wheel checks (test_each_vm_group_installs_as_wheels_on_every_image)
    and `make test-pythons` (scripts/try_pythons.py) cover."""
    chosen = yaml.safe_load((ROOT / "roles/iot_app/defaults/main.yml").read_text())["iot_app_python"]
    requires = re.search(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    for release, facts in _images().items():
        assert chosen == facts["iot_app_python"] == "python3", release
        version = ".".join(map(str, _version(facts["python3"])))
        assert version == facts["iot_app_python_version"], (release, version)
        assert _version(version) >= _version(requires), (release, version, requires)
        assert version in IMAGE_PYTHONS, (release, version)


def test_the_default_image_is_the_one_with_the_fewest_workarounds():
    """docs/DEPLOY.md 2.1: the Chameleon image whose packages need the fewest workarounds."""
    images = {f["image"]: f for f in _images().values() if not f["image"].startswith("rehearsal")}
    default = yaml.safe_load((ROOT / "roles/provision/defaults/main.yml").read_text())["provision_image"]
    fewest = min(len(f["workarounds"]) for f in images.values())
    assert len(images[default]["workarounds"]) == fewest, {i: f["workarounds"] for i, f in images.items()}
    assert f"`{default}` (the default)" in (ROOT / "docs/DEPLOY.md").read_text()


def test_what_the_roles_need_exists_on_every_image():
    """deb822_repository needs python3-debian; the kafka role openjdk-17-jre-headless; the
    mongodb role MongoDB's repository for the image's release (not the rehearsal's)."""
    mongodb = yaml.safe_load((ROOT / "roles/mongodb/defaults/main.yml").read_text())
    version = str(mongodb["mongodb_version"])
    kafka = yaml.safe_load((ROOT / "roles/kafka/defaults/main.yml").read_text())
    assert kafka["kafka_java_package"] == "openjdk-17-jre-headless"
    for release, facts in _images().items():
        assert facts["python3_debian"], release
        assert facts["openjdk_17"] is True, release
        if not facts["image"].startswith("rehearsal"):
            assert version in facts["mongodb_org"], (release, version, facts["mongodb_org"])
