"""tests/binaries.py: what the project provides skips a test where it is missing, and fails
it under CI=true (.ci/run), where it must be there."""

from __future__ import annotations

import pytest

from tests.binaries import mount_tmpfs, required_binary


def test_a_tmpfs_that_cannot_be_mounted_skips_and_fails_under_ci(tmp_path, monkeypatch):
    nowhere = tmp_path / "no-such-directory"  # mount refuses it, root or not
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot mount a tmpfs"):
        mount_tmpfs(nowhere, "size=64k")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        mount_tmpfs(nowhere, "size=64k")


def test_a_missing_tool_skips_and_fails_under_ci(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install-system-packages"):
        required_binary("curl", "curl")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        required_binary("curl", "curl")
