"""Archive files of expired images (common/archive.py): what is written reads back byte for
byte; a last line cut short by a crash is skipped, any other damage is an error naming the line."""

from __future__ import annotations

import pytest

from common.archive import ArchiveError, ArchiveWriter, archives, read_archive


def docs(n: int) -> list[dict]:
    return [{"image_id": f"id-{i}", "image": bytes(range(256)) * (i + 1), "label": "caf\u00e9", "seq": i,
             "stored_at": 1.5 + i} for i in range(n)]


def test_appended_batches_read_back_as_they_were(tmp_path):
    writer = ArchiveWriter(tmp_path / "a", "Postgre SQL", now=0)
    assert writer.append(docs(2)) == 2 and writer.append([]) == 0 and writer.append(docs(3)[2:]) == 1
    assert archives(tmp_path / "a") == [writer.path]
    assert writer.path.name.startswith("expired-postgre-sql-19700101T000000Z-")
    assert (writer.path.parent.stat().st_mode & 0o777) == 0o700
    assert list(read_archive(writer.path)) == docs(3)
    assert archives(tmp_path / "none") == []


def test_a_last_line_cut_short_is_skipped_and_any_other_bad_line_is_an_error(tmp_path, caplog):
    writer = ArchiveWriter(tmp_path, "mongodb")
    writer.append(docs(2))
    whole = writer.path.read_text()
    writer.path.write_text(whole[:-40])  # the crash: the last line half written
    assert [d["image_id"] for d in read_archive(writer.path)] == ["id-0"]
    assert "incomplete" in caplog.text
    lines = whole.splitlines(keepends=True)
    writer.path.write_text(lines[0][:-40] + "\n" + lines[1])
    with pytest.raises(ArchiveError, match="line 1"):
        list(read_archive(writer.path))


def test_a_failed_write_is_cut_back_and_raised_so_the_batch_stays_in_the_store(tmp_path, monkeypatch):
    import errno
    import os

    writer = ArchiveWriter(tmp_path, "couchdb")
    writer.append(docs(1))
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        writer.append(docs(3)[1:])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [d["image_id"] for d in read_archive(writer.path)] == ["id-0"]
    writer.append(docs(3)[1:])
    assert list(read_archive(writer.path)) == docs(3)
