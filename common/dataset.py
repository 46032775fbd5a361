"""CIFAR-10 / CIFAR-100 from the official "python version" archives, or synthetic images.

``DATASET_SOURCE`` may be a directory in the official layout (``cifar-10-batches-py/``
or its parent), a local ``.tar.gz``, or a URL.  Empty means the official URL; the
download is cached where Keras caches it (``~/.keras/datasets``), checked against
the official md5 and shown with a progress bar.  Tarballs are read in place (no
extraction).  ``synthetic`` is used only when asked for: it has no labels.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.download import DownloadError, fetch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    folder: str
    splits: dict  # split -> member names inside folder
    meta: str
    label_key: bytes
    names_key: bytes


ARCHIVES = {
    "cifar10": Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        splits={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        meta="batches.meta", label_key=b"labels", names_key=b"label_names"),
    "cifar100": Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        splits={"train": ["train"], "test": ["test"]},
        meta="meta", label_key=b"fine_labels", names_key=b"fine_label_names"),
}


class DatasetUnavailable(RuntimeError):
    """The data cannot be had; the message says how to provide it."""


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # N x 32 x 32 x 3 uint8
    labels: list[str | None]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def download(url: str, dest: Path, md5: str | None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; verify md5 when known."""
    try:
        return fetch(url, dest, md5=md5, timeout_s=timeout)
    except DownloadError as exc:
        raise DatasetUnavailable(
            f"could not download {exc}.\n"
            "Provide the data another way: set DATASET_SOURCE (or --dataset-source) to a "
            "directory in the official 'python version' layout or to a local copy of the "
            f"tar.gz, or put the archive at {dest}. DATASET=synthetic sends generated "
            "images without labels.") from None


def _unpickle(data: bytes) -> dict:
    return pickle.loads(data, encoding="bytes")


class _DirReader:
    def __init__(self, root: Path, folder: str):
        self.root = root / folder if (root / folder).is_dir() else root

    def read(self, member: str) -> dict:
        path = self.root / member
        if not path.is_file():
            raise DatasetUnavailable(f"{path} is missing: not an official CIFAR 'python version' directory")
        return _unpickle(path.read_bytes())


class _TarReader:
    def __init__(self, path: Path, folder: str):
        self.tar = tarfile.open(path, "r:*")
        self.folder = folder
        self.path = path

    def read(self, member: str) -> dict:
        try:
            fh = self.tar.extractfile(f"{self.folder}/{member}")
        except KeyError:
            fh = None
        if fh is None:
            raise DatasetUnavailable(f"{self.path} has no {self.folder}/{member}: not the official archive layout")
        return _unpickle(fh.read())


def _reader(archive: Archive, source: str):
    if source.startswith(("http://", "https://")):
        dest = keras_cache_dir() / Path(source).name
        return _TarReader(download(source, dest, archive.md5 if source == archive.url else None),
                          archive.folder), source
    path = Path(source).expanduser()
    if path.is_dir():
        return _DirReader(path, archive.folder), str(path)
    if path.is_file():
        return _TarReader(path, archive.folder), str(path)
    raise DatasetUnavailable(
        f"DATASET_SOURCE {source!r} is neither a directory, a file nor a URL. Point it at the "
        f"official '{archive.folder}' directory, its tar.gz, or leave it empty to download {archive.url}.")


def load(name: str, source: str = "", split: str = "test", limit: int | None = None,
         seed: int = 0) -> Dataset:
    """Load a dataset split as uint8 images and class names."""
    if name == "synthetic":
        n = limit or 1000
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        log.warning("DATASET=synthetic: %d generated images, no labels, accuracy will be null", n)
        return Dataset("synthetic", images, [None] * n, "generated")
    if name not in ARCHIVES:
        raise DatasetUnavailable(f"unknown DATASET {name!r}; use cifar10, cifar100 or synthetic")
    archive = ARCHIVES[name]
    source = source or archive.url
    if source == archive.url:
        cached_dir = keras_cache_dir() / archive.folder
        if cached_dir.is_dir():  # Keras's own load_data() extracts here
            source = str(cached_dir)
    reader, where = _reader(archive, source)
    names = [n.decode() for n in reader.read(archive.meta)[archive.names_key]]
    chunks, labels = [], []
    for member in archive.splits[split]:
        batch = reader.read(member)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        chunks.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(names[i] for i in batch[archive.label_key])
        if limit and sum(len(c) for c in chunks) >= limit:
            break
    images = np.concatenate(chunks)[:limit]
    log.info("loaded %s %s split: %d images from %s", name, split, len(images), where)
    return Dataset(name, images, labels[: len(images)], where)
