"""s3rver/serve.js lists more than one page of keys, for real: the broker (tansu) lists a
partition's record batches at each fetch, one S3 object per batch, so a partition that
holds more than 1,000 batches (ListObjectsV2's page) needs the continuation token.
s3rver makes that token with DES, which Node's OpenSSL 3 refuses: unpatched, the second
page's token failed with 500 and the broker stopped serving the partition (found by the
soak, docs/RELIABILITY.md).  serve.js pages through an index of the keys under a prefix,
made at the first listing and kept by every write: a listing after puts and deletes must
show exactly what is stored."""

from __future__ import annotations

import re

import requests

from stack.broker import BUCKET
from tests.support import run_s3rver, s3_headers

KEYS = 2100  # three pages of 1,000


def test_a_listing_longer_than_a_page_is_followed_to_its_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with run_s3rver(tmp_path, data) as (storage, log_path), requests.Session() as http:
        url = f"{storage.url}/{BUCKET}"
        names = [f"topics/t/partitions/0/records/{n:020d}.batch" for n in range(KEYS)]
        for name in names:
            put = http.put(f"{url}/{name}", data=b"batch", headers=s3_headers(storage, {"If-None-Match": "*"}),
                           timeout=30)
            assert put.status_code == 200, put.text
        http.put(f"{url}/topics/t/partitions/1/records/0.batch", data=b"other", headers=s3_headers(storage),
                 timeout=30)

        listed, pages = _list(http, storage, log_path, "topics/t/partitions/0/records/")
        assert pages == 3
        assert listed == names  # every key once, in order, nothing of the other partition

        # After the index exists: new keys (before, between and after the listed ones), a
        # key written again and deleted keys show in the next listing as they are stored.
        added = ["topics/t/partitions/0/records/0.batch", f"topics/t/partitions/0/records/{KEYS // 2:020d}5.batch",
                 "topics/t/partitions/0/records/99999999999999999999.batch"]
        for name in [*added, names[7]]:
            assert http.put(f"{url}/{name}", data=b"batch", headers=s3_headers(storage), timeout=30).status_code == 200
        for name in names[100:110]:
            assert http.delete(f"{url}/{name}", headers=s3_headers(storage), timeout=30).status_code == 204
        listed, _ = _list(http, storage, log_path, "topics/t/partitions/0/records/")
        assert listed == sorted(set(names) - set(names[100:110]) | set(added))


def _list(http, storage, log_path, prefix: str) -> tuple[list[str], int]:
    """Every key under ``prefix`` (ListObjectsV2, following the continuation token) and the
    number of pages."""
    url = f"{storage.url}/{BUCKET}"
    listed, token, pages = [], None, 0
    while True:
        params = {"list-type": "2", "prefix": prefix}
        if token:
            params["continuation-token"] = token
        page = http.get(url, params=params, headers=s3_headers(storage), timeout=30)
        assert page.status_code == 200, (page.status_code, page.text[:300], log_path.read_text()[-2000:])
        pages += 1
        listed += re.findall(r"<Key>([^<]+)</Key>", page.text)
        found = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", page.text)
        if "<IsTruncated>true</IsTruncated>" not in page.text:
            assert found is None
            return listed, pages
        assert found, page.text[-500:]
        token = found.group(1)
        assert pages < KEYS, "the listing never ends"


def test_a_partition_is_listed_up_to_the_first_batch_whose_offsets_are_taken_and_not_written(tmp_path):
    """tansu takes a batch's offsets in the partition's watermark.json, then writes the batch.
    A listing in between must not show a later batch without the earlier one: tansu's fetch
    would answer with the later batch and the consumer would skip the earlier one's records."""
    data = tmp_path / "data"
    data.mkdir()
    partition = "clusters/c/topics/t/partitions/0000000002/"
    records = partition + "records/"
    with run_s3rver(tmp_path, data) as (storage, log_path), requests.Session() as http:
        url = f"{storage.url}/{BUCKET}"

        def put(key: str, body: bytes) -> None:
            assert http.put(f"{url}/{key}", data=body, headers=s3_headers(storage), timeout=30).status_code == 200

        def batch(offset: int) -> str:
            return f"{records}{offset:020d}.batch"

        put(partition + "watermark.json", b'{"low":null,"high":3,"timestamps":null}')  # batch 0: offsets 0-2
        put(batch(0), b"batch 0")
        put(partition + "watermark.json", b'{"low":null,"high":5,"timestamps":null}')  # batch 3 taken
        put(partition + "watermark.json", b'{"low":null,"high":9,"timestamps":null}')  # batch 5 taken
        put(batch(5), b"batch 5")  # the later produce finishes first
        assert _list(http, storage, log_path, records)[0] == [batch(0)]
        assert _list(http, storage, log_path, "clusters/c/")[0] == sorted([batch(0), batch(5), partition + "watermark.json"])
        put(batch(3), b"batch 3")
        assert _list(http, storage, log_path, records)[0] == [batch(0), batch(3), batch(5)]


def test_a_delete_removes_the_objects_files_and_the_prefix_takes_new_keys(tmp_path):
    """serve.js deletes an object's three files and leaves its directory (s3rver read the
    whole directory after each delete to remove it when empty, which stalled every other
    request while the retention deleted a lagging partition's batches): a deleted key is
    gone from GET, the listing and the disk, and a prefix emptied this way takes new keys."""
    data = tmp_path / "data"
    data.mkdir()
    with run_s3rver(tmp_path, data) as (storage, log_path), requests.Session() as http:
        url = f"{storage.url}/{BUCKET}"
        prefix = "topics/t/partitions/0/records/"
        names = [f"{prefix}{n:020d}.batch" for n in range(30)]
        for name in names:
            assert http.put(f"{url}/{name}", data=b"batch", headers=s3_headers(storage), timeout=30).status_code == 200
        assert _list(http, storage, log_path, prefix)[0] == names
        for name in names:
            assert http.delete(f"{url}/{name}", headers=s3_headers(storage), timeout=30).status_code == 204
        assert http.get(f"{url}/{names[3]}", headers=s3_headers(storage), timeout=30).status_code == 404
        assert _list(http, storage, log_path, prefix)[0] == []
        left = [p.name for p in data.rglob("*") if p.is_file() and "00000000000000000" in p.name]
        assert left == [], left
        again = f"{prefix}{99:020d}.batch"
        assert http.put(f"{url}/{again}", data=b"new", headers=s3_headers(storage), timeout=30).status_code == 200
        assert http.get(f"{url}/{again}", headers=s3_headers(storage), timeout=30).content == b"new"
        assert _list(http, storage, log_path, prefix)[0] == [again]
