"""common.untar.extract_all: the data filter where tarfile has it, the member check where it
does not (Debian 12's Python 3.11.2); both refuse what would leave the destination."""

import io
import tarfile

import pytest

from common.untar import extract_all


def _archive(path, *members):
    """members: (name, bytes) for a file, (name, None, linkname) for a symlink."""
    with tarfile.open(path, "w") as tar:
        for name, data, *link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link[0]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(params=["data filter", "member check"])
def mode(request, monkeypatch):
    if request.param == "member check":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter (3.11.4 / 3.10.12 added it)")
    return request.param


def test_files_and_directories_are_extracted(tmp_path, mode):
    archive = _archive(tmp_path / "ok.tar", ("d/a.txt", b"a"), ("./b.txt", b"bb"))
    with tarfile.open(archive) as tar:
        extract_all(tar, tmp_path / "out")
    assert (tmp_path / "out/d/a.txt").read_bytes() == b"a" and (tmp_path / "out/b.txt").read_bytes() == b"bb"


@pytest.mark.parametrize("members", [
    [("../escaped.txt", b"x")],
    [("inside.txt", b"i"), ("link", None, "/etc/passwd")],
], ids=["dotdot", "symlink out"])
def test_what_would_leave_the_destination_is_refused_before_anything_is_written(tmp_path, mode, members):
    archive = _archive(tmp_path / "bad.tar", *members)
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(archive) as tar, pytest.raises(tarfile.TarError):
        extract_all(tar, out)
    assert not (tmp_path / "escaped.txt").exists()
    if mode == "member check":  # checked as a whole first; the filter refuses member by member
        assert list(out.iterdir()) == []


def test_an_absolute_name_never_lands_at_its_absolute_path(tmp_path, mode):
    """The data filter strips the leading slash (the file lands inside); the check refuses it."""
    absolute = tmp_path / "absolute-escape.txt"
    archive = _archive(tmp_path / "abs.tar", (str(absolute), b"x"))
    out = tmp_path / "out"
    with tarfile.open(archive) as tar:
        if mode == "member check":
            with pytest.raises(tarfile.TarError):
                extract_all(tar, out)
        else:
            extract_all(tar, out)
            assert (out / str(absolute).lstrip("/")).read_bytes() == b"x"
    assert not absolute.exists()


def test_the_command_extracts_under_dest_and_refuses_an_escape(tmp_path, mode, capsys):
    """python -m common.untar, as the experiment role unpacks the fetched runs on the controller."""
    from common.untar import main

    good = _archive(tmp_path / "good.tar", ("run/latencies.csv", b"a,b\n"))
    assert main([str(good), str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "run" / "latencies.csv").read_bytes() == b"a,b\n"
    bad = _archive(tmp_path / "bad.tar", ("../outside.txt", b"x"))
    assert main([str(bad), str(tmp_path / "results")]) == 1
    assert not (tmp_path / "outside.txt").exists() and "cannot extract" in capsys.readouterr().err
