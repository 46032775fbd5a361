"""scripts/try_pythons.py (make test-pythons): which interpreters it tries, and its verdicts."""

import sys

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import try_pythons  # noqa: E402


def test_it_reads_the_minimum_that_pyproject_promises():
    assert try_pythons.requires_python() == (3, 10)


def test_it_tries_each_interpreter_requires_python_admits_once_oldest_first(tmp_path, monkeypatch):
    versions = {"3.9.18": (3, 9, 18), "3.10.13": (3, 10, 13), "3.13.0": (3, 13, 0), "3.12.1": (3, 12, 1)}
    for name in versions:
        (tmp_path / "versions" / name / "bin").mkdir(parents=True)
        (tmp_path / "versions" / name / "bin" / "python3").touch()
    by_path = {str(tmp_path / "versions" / n / "bin" / "python3"): v for n, v in versions.items()}
    by_path["/usr/bin/python3"] = (3, 12, 1)  # the same version as pyenv's: tried once
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setattr(try_pythons.shutil, "which", lambda name: None)
    monkeypatch.setattr(try_pythons.os.path, "exists", lambda p: p in by_path)
    monkeypatch.setattr(try_pythons, "version_of", lambda p: by_path.get(p))
    found = try_pythons.interpreters()
    assert [v for _, v in found] == [(3, 10, 13), (3, 12, 1), (3, 13, 0)]


def test_a_crash_names_the_test_it_happened_in(tmp_path, monkeypatch):
    class Proc:
        returncode, stdout = -11, "....."
        stderr = 'Fatal Python error\n  File "/x/tests/unit/test_train.py", line 67 in test_train_it\n'
    monkeypatch.setattr(try_pythons.subprocess, "run", lambda *a, **k: Proc())
    verdict = try_pythons.unit_tests("python", tmp_path / "log.txt", [])
    assert verdict == "FAIL: signal 11 in tests/unit/test_train.py::test_train_it"
    assert "Fatal Python error" in (tmp_path / "log.txt").read_text()
