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
import time
from pathlib import Path

import pytest
import requests

from stack.broker import BUCKET, S3RVER_DIR, BrokerStorage
from stack.ports import free_port
from tests.binaries import required_binary, unavailable
from tests.support import HANG_GUARD_S, fill_disk


@pytest.fixture
def s3rver_on_small_disk(tmp_path):
    required_binary("node", "nodejs")
    if not (S3RVER_DIR / "node_modules" / "s3rver" / "package.json").is_file():
        unavailable("s3rver is not installed (make s3rver)")
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    storage = BrokerStorage(tmp_path, free_port())  # its keys file in tmp_path, off the small disk
    component = storage.component()
    argv = [*component.argv[:2], str(data), *component.argv[3:]]
    log_path = tmp_path / "s3rver.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not storage.ready():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "s3rver never answered"
            time.sleep(0.1)
        yield storage, data, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=HANG_GUARD_S)
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def signed(storage: BrokerStorage, headers: dict | None = None) -> dict:
    """The headers serve.js and s3rver accept: an Authorization naming the stack's key id
    (s3rver does not check signature-V4 signatures)."""
    key_id, _secret = storage.keys()
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{now[:8]}/auto/s3/aws4_request, "
                             f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
            "x-amz-date": now, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", **(headers or {})}


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_a_full_disk_is_refused_with_a_clear_error_and_leaves_nothing_behind(s3rver_on_small_disk):
    storage, data, log_path = s3rver_on_small_disk
    url = f"{storage.url}/{BUCKET}"
    old = os.urandom(1024)
    put = requests.put(f"{url}/a", data=old, headers=signed(storage), timeout=30)
    assert put.status_code == 200, put.text
    etag = put.headers["ETag"]

    filler = fill_disk(data)
    before = files(data)
    new = requests.put(f"{url}/b", data=os.urandom(64 * 1024), headers=signed(storage, {"If-None-Match": "*"}),
                       timeout=30)
    over = requests.put(f"{url}/a", data=os.urandom(8 * 1024), headers=signed(storage, {"If-Match": etag}),
                        timeout=30)
    for r in (new, over):
        assert r.status_code == 507 and "<Code>InsufficientStorage</Code>" in r.text, (r.status_code, r.text)
    assert files(data) == before  # no partial object, no temporary, no checksum of an unwritten object
    got = requests.get(f"{url}/a", headers=signed(storage), timeout=30)
    assert (got.status_code, got.content, got.headers["ETag"]) == (200, old, etag)
    assert requests.get(f"{url}/b", headers=signed(storage), timeout=30).status_code == 404
    lines = log_path.read_text(errors="replace").splitlines()
    full = [x for x in lines if "ERROR" in x and "disk full" in x]
    assert full and str(data) in full[0] and "ENOSPC" in full[0], lines

    filler.unlink()
    again = requests.put(f"{url}/b", data=b"room again", headers=signed(storage, {"If-None-Match": "*"}), timeout=30)
    assert again.status_code == 200, again.text
    assert requests.get(f"{url}/b", headers=signed(storage), timeout=30).content == b"room again"
    assert any("has room again" in x and "2 refused" in x for x in log_path.read_text().splitlines())
    assert not [p for p in files(data) if p.endswith(".tmp")]
