"""s3rver/serve.js on a full disk, for real: its data directory is a 2 MB tmpfs (mounted here;
root only, skipped otherwise) filled to the last byte while the server runs.

Asserted: a write that finds no room is answered 507 InsufficientStorage (not s3rver's bare
500) and leaves nothing behind (no partial object, no temporary file, the old version of an
overwritten object whole with its ETag); the server's log has an ERROR line naming the full
disk and its directory; reads go on; once the filler is deleted, writes are accepted again
and the log says so.  The broker's side (tansu, the pipeline) on a full disk:
tests/faults/test_faults_broker_storage.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from stack.broker import BUCKET
from tests.support import fill_disk, run_s3rver, s3_headers


@pytest.fixture
def s3rver_on_small_disk(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        with run_s3rver(tmp_path, data) as (storage, log_path):  # its keys file in tmp_path, off the small disk
            yield storage, data, log_path
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_a_full_disk_is_refused_with_a_clear_error_and_leaves_nothing_behind(s3rver_on_small_disk):
    storage, data, log_path = s3rver_on_small_disk
    url = f"{storage.url}/{BUCKET}"
    old = os.urandom(1024)
    put = requests.put(f"{url}/a", data=old, headers=s3_headers(storage), timeout=30)
    assert put.status_code == 200, put.text
    etag = put.headers["ETag"]

    filler = fill_disk(data)
    before = files(data)
    new = requests.put(f"{url}/b", data=os.urandom(64 * 1024), headers=s3_headers(storage, {"If-None-Match": "*"}),
                       timeout=30)
    over = requests.put(f"{url}/a", data=os.urandom(8 * 1024), headers=s3_headers(storage, {"If-Match": etag}),
                        timeout=30)
    for r in (new, over):
        assert r.status_code == 507 and "<Code>InsufficientStorage</Code>" in r.text, (r.status_code, r.text)
    assert files(data) == before  # no partial object, no temporary, no checksum of an unwritten object
    got = requests.get(f"{url}/a", headers=s3_headers(storage), timeout=30)
    assert (got.status_code, got.content, got.headers["ETag"]) == (200, old, etag)
    assert requests.get(f"{url}/b", headers=s3_headers(storage), timeout=30).status_code == 404
    lines = log_path.read_text(errors="replace").splitlines()
    full = [x for x in lines if "ERROR" in x and "disk full" in x]
    assert full and str(data) in full[0] and "ENOSPC" in full[0], lines

    filler.unlink()
    again = requests.put(f"{url}/b", data=b"room again", headers=s3_headers(storage, {"If-None-Match": "*"}), timeout=30)
    assert again.status_code == 200, again.text
    assert requests.get(f"{url}/b", headers=s3_headers(storage), timeout=30).content == b"room again"
    assert any("has room again" in x and "2 refused" in x for x in log_path.read_text().splitlines())
    assert not [p for p in files(data) if p.endswith(".tmp")]
