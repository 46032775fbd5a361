"""``make down`` keeps the stack's data, ``make clean`` removes it and says what it removed
(stack/control.py ``down`` / ``clean``), and ``clean`` removes nothing that is not a stack's."""

from __future__ import annotations

import subprocess

from stack.control import clean, down
from tests.support import ROOT
from tests.unit.test_makefile import dry_run


def stack_dir_with_data(tmp_path):
    d = tmp_path / ".run"
    for store in ("postgres", "couchdb", "broker"):
        (d / "data" / store).mkdir(parents=True)
        (d / "data" / store / "file").write_bytes(b"x" * 2000)
    (d / "data" / "mongo.db").write_bytes(b"y" * 1000)
    (d / "logs").mkdir()
    (d / "logs" / "kafka.log").write_text("log\n")
    (d / "stack.env").write_text("STORE=postgres\n")
    return d


def test_down_keeps_the_stores_data(tmp_path):
    d = stack_dir_with_data(tmp_path)
    assert down(d) == 0
    assert (d / "data" / "postgres" / "file").read_bytes() == b"x" * 2000
    assert (d / "data" / "mongo.db").is_file()


def test_clean_removes_the_stack_directory_and_names_each_stores_data(tmp_path, capsys):
    d = stack_dir_with_data(tmp_path)
    assert clean(d) == 0
    assert not d.exists()
    out = capsys.readouterr().out
    for name in ("broker", "couchdb", "mongo.db", "postgres"):
        assert f"removing {d / 'data' / name}" in out
    assert f"removed {d}: 4 store(s)' data" in out


def test_clean_refuses_a_directory_that_is_not_a_stacks(tmp_path, capsys):
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    assert clean(other) == 2
    assert (other / "notes.txt").read_text() == "mine\n"
    assert "refusing" in capsys.readouterr().err
    assert clean(tmp_path / "absent") == 0


def test_make_clean_runs_stack_clean_and_make_down_stack_down():
    clean_lines = subprocess.run(["make", "-n", "--no-print-directory", "clean"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60, check=True).stdout
    assert "-m stack clean" in clean_lines and "-m stack down" not in clean_lines
    assert "-m stack down" in " ".join(dry_run("down"))
