"""The Makefile passes what the docs (README.md, docs/USAGE.md) tell users to type through to the commands."""

import shlex
import subprocess

from tests.support import ROOT


def dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    line = out.replace("\\\n", " ").strip().splitlines()[-1]
    return shlex.split(line)


def test_experiment_passes_its_variables_through():
    argv = dry_run("experiment", "PRODUCERS=1 2", "IMAGES=100", "RATE=10")
    i = argv.index("experiments.experiment")
    assert argv[i + 1:] == ["--producers", "1", "2", "--images", "100", "--rate", "10"]


def test_experiment_passes_repeat_and_the_stopping_rule_through():
    argv = dry_run("experiment", "PRODUCERS=1 2", "REPEAT=3", "UNTIL_CI=10")
    i = argv.index("experiments.experiment")
    assert argv[i + 1:] == ["--producers", "1", "2", "--repeat", "3", "--until-ci", "10"]


def test_experiment_without_variables_uses_the_defaults():
    argv = dry_run("experiment")
    assert argv[argv.index("experiments.experiment") + 1:] == []
