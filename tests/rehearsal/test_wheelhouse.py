"""tests/rehearsal/wheelhouse.py asks pip for the containers' pins (CPython 3.11), whatever
Python the host runs: pip evaluates a requirement's marker for its own interpreter, so the
file itself would give a 3.10 host the 3.10 pins."""

from __future__ import annotations

import subprocess

from tests.rehearsal import wheelhouse


def test_the_download_asks_for_the_pins_of_the_containers_python(tmp_path, monkeypatch):
    (tmp_path / "base.txt").write_text('numpy==2.4.6; python_version >= "3.11"\n'
                                       'numpy==2.2.6; python_version < "3.11"\nrequests==2.32.5\n')
    (tmp_path / "top.txt").write_text("-r base.txt\nflask==3.1.2  # a comment\n")
    asked = {}

    def run(cmd, **kwargs):
        asked["cmd"] = cmd
        asked["pins"] = open(cmd[cmd.index("-r") + 1]).read()
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheelhouse.subprocess, "run", run)
    wheelhouse.download([tmp_path / "top.txt", tmp_path / "base.txt"], extra=["pip"], dest=tmp_path / "wheels")
    assert asked["pins"].splitlines() == ["numpy==2.4.6", "requests==2.32.5", "flask==3.1.2"]
    cmd = asked["cmd"]
    assert cmd[cmd.index("--python-version") + 1] == "3.11" and cmd.count("-r") == 1 and cmd[-1] == "pip"
    assert list((tmp_path / "wheels").glob(".complete-*")), "the stamp: the next call downloads nothing"
