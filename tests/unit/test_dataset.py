"""The CIFAR loaders read the official archive layout from a tarball, a directory or a URL."""

import hashlib
import tarfile

import numpy as np
import pytest

from common import dataset as ds
from common.untar import extract_all
from tests.support import make_cifar_archive


def test_tarball_and_directory_give_the_same_images(tmp_path, cifar_archive):
    from_tar = ds.load("cifar10", str(cifar_archive), "test")
    with tarfile.open(cifar_archive) as tar:
        extract_all(tar, tmp_path)
    from_dir = ds.load("cifar10", str(tmp_path), "test")  # parent of cifar-10-batches-py/
    from_inner = ds.load("cifar10", str(tmp_path / "cifar-10-batches-py"), "test")
    assert from_tar.images.shape[1:] == (32, 32, 3) and from_tar.images.dtype == np.uint8
    assert np.array_equal(from_tar.images, from_dir.images)
    assert np.array_equal(from_tar.images, from_inner.images)
    assert from_tar.labels == from_dir.labels
    assert set(from_tar.labels) <= {"airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck"}


def test_pixel_layout_is_channel_planes_row_major(tmp_path):
    """Rows are 1024 red, 1024 green, 1024 blue values: check one pixel by hand."""
    import pickle

    archive = make_cifar_archive(tmp_path / "a.tar.gz", per_batch=3)
    with tarfile.open(archive) as tar:
        raw = pickle.load(tar.extractfile("cifar-10-batches-py/test_batch"), encoding="bytes")
    row = raw[b"data"][1]
    img = ds.load("cifar10", str(archive), "test").images[1]
    y, x = 5, 7
    assert tuple(img[y, x]) == (row[y * 32 + x], row[1024 + y * 32 + x], row[2048 + y * 32 + x])


def test_train_split_reads_all_five_batches(tmp_path):
    archive = make_cifar_archive(tmp_path / "a.tar.gz", per_batch=4)
    assert len(ds.load("cifar10", str(archive), "train")) == 20
    assert len(ds.load("cifar10", str(archive), "train", limit=6)) == 6


def test_missing_source_says_how_to_provide_it(tmp_path):
    with pytest.raises(ds.DatasetUnavailable, match="DATASET_SOURCE"):
        ds.load("cifar10", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DatasetUnavailable, match="official"):
        ds.load("cifar10", str(tmp_path / "empty"))


def test_download_checks_md5_and_caches(tmp_path, monkeypatch):
    archive = make_cifar_archive(tmp_path / "src.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    got = ds.download(archive.as_uri(), dest, md5)
    assert got == dest and dest.read_bytes() == archive.read_bytes()
    with pytest.raises(ds.DatasetUnavailable, match="md5 mismatch"):
        ds.download(archive.as_uri(), tmp_path / "other.tar.gz", "0" * 32)
    assert not (tmp_path / "other.tar.gz").exists()
    with pytest.raises(ds.DatasetUnavailable, match="could not download"):
        ds.download((tmp_path / "absent.tar.gz").as_uri(), tmp_path / "x.tar.gz", None)


def test_synthetic_only_when_asked_and_unlabelled():
    data = ds.load("synthetic", limit=5)
    assert len(data) == 5 and data.labels == [None] * 5
    with pytest.raises(ds.DatasetUnavailable):
        ds.load("imagenet")


def test_a_split_read_from_a_tarball_is_cached_as_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = make_cifar_archive(tmp_path / "a.tar.gz", per_batch=4)
    assert len(ds.load("cifar10", str(archive), "train", limit=6)) == 6
    assert not list(ds.split_cache_dir().glob("*.npz")), "a partial read must not be cached"
    first = ds.load("cifar10", str(archive), "test")
    assert len(list(ds.split_cache_dir().glob("cifar10-test-*.npz"))) == 1

    def no_archive(self, member):
        raise AssertionError(f"read {member} from the archive although it is cached")

    with monkeypatch.context() as m:
        m.setattr(ds._TarReader, "read", no_archive)
        again = ds.load("cifar10", str(archive), "test")
        assert np.array_equal(again.images, first.images) and again.labels == first.labels
        assert len(ds.load("cifar10", str(archive), "test", limit=2)) == 2
    # a changed archive is read again (the key is its path, size and mtime)
    make_cifar_archive(archive, per_batch=5)
    assert len(ds.load("cifar10", str(archive), "test")) == 5


def test_a_damaged_cache_is_read_from_the_archive_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = make_cifar_archive(tmp_path / "a.tar.gz", per_batch=3)
    first = ds.load("cifar10", str(archive), "test")
    (cached,) = ds.split_cache_dir().glob("*.npz")
    cached.write_bytes(b"not an npz")
    again = ds.load("cifar10", str(archive), "test")
    assert np.array_equal(again.images, first.images) and again.labels == first.labels
