"""stack/private.py: a secret file is its owner's only from its first byte, made once, and
replaced whole."""

from __future__ import annotations

import stat

from stack.private import made_once, write_private


def test_a_secret_is_made_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "data" / "server.password"
    calls = []

    def make():
        calls.append(1)
        return f"secret-{len(calls)}\n"

    assert made_once(path, make) == "secret-1\n" == made_once(path, make)
    assert len(calls) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_rewritten_file_is_replaced_whole_and_stays_private(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old and longer than the new text\n")
    path.chmod(0o644)
    write_private(path, "{}")
    assert path.read_text() == "{}" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
