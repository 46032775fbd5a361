"""CIFAR-10 / CIFAR-100 from the official "python version" archives, or synthetic images.

``DATASET_SOURCE`` may be a directory in the official layout (``cifar-10-batches-py/``
or its parent), a local ``.tar.gz``, or a URL.  Empty means the official URL; the
download is cached where Keras caches it (``~/.keras/datasets``), checked against
the official md5 and shown with a progress bar.  Tarballs are read in place (no
extraction); a split read from a tarball is kept as arrays in ``split_cache_dir()`` (keyed
by the archive's path, size and mtime), because a gzip archive is read from its start
to reach a member: 0.2 s of CPU for the 14 MB sample, seconds for the full archive, at
every producer's start.  ``synthetic`` is used only when asked for: it has no labels.

``folder``: ``DATASET_SOURCE`` is a directory of JPEG/PNG files of any size (real camera
pictures), sent as they are, never re-encoded; a file's label is the name of the
sub-folder it is in (``cat/0001.jpg`` is a cat; files at the top have none).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.schema import encode_png, sniff_format
from common.settings import CacheSettings
from common.wire import FILE_SUFFIXES, IMAGE_FORMATS, PNG

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
    images: np.ndarray | None  # N x 32 x 32 x 3 uint8 (None for a folder: see ``files``)
    labels: list[str | None]
    source: str
    files: list[Path] | None = None  # DATASET=folder: the image files, sent as they are

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.images)

    def encoded(self, i: int) -> tuple[bytes, str]:
        """Image ``i`` as a file and its format (png or jpeg): a folder's file as it is, an
        array as a PNG (encoded now: a producer pays for its encoding per image sent)."""
        if self.files is not None:
            data = self.files[i].read_bytes()
            return data, sniff_format(data) or "unknown"
        return encode_png(self.images[i]), PNG


FOLDER_SUFFIXES = tuple(suffix for f in IMAGE_FORMATS for suffix in FILE_SUFFIXES[f])


def load_folder(source: str, max_bytes: int | None = None) -> Dataset:
    """Every JPEG/PNG file under ``source`` (sorted), checked by its first bytes and size."""
    if not source:
        raise DatasetUnavailable("DATASET=folder needs DATASET_SOURCE (or --dataset-source): "
                                 "a directory of .jpg/.jpeg/.png files")
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DatasetUnavailable(f"DATASET_SOURCE {source!r} is not a directory (DATASET=folder)")
    files, labels, refused = [], [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in FOLDER_SUFFIXES and p.is_file()):
        rel = path.relative_to(root)
        with path.open("rb") as fh:
            head = fh.read(16)
        size = path.stat().st_size
        if sniff_format(head) is None:
            refused.append(f"{rel}: not a PNG or JPEG file")
        elif max_bytes is not None and size > max_bytes:
            refused.append(f"{rel}: {size} bytes, over MAX_MESSAGE_BYTES={max_bytes}")
        else:
            files.append(path)
            labels.append(rel.parts[0] if len(rel.parts) > 1 else None)
    for why in refused[:10]:
        log.warning("DATASET=folder: skipping %s", why)
    if len(refused) > 10:
        log.warning("DATASET=folder: %d more files skipped", len(refused) - 10)
    if not files:
        raise DatasetUnavailable(f"no usable .jpg/.jpeg/.png file under {root}"
                                 + (f" ({len(refused)} skipped: {refused[0]})" if refused else ""))
    log.info("loaded folder %s: %d images (%d labelled)", root, len(files), sum(x is not None for x in labels))
    return Dataset("folder", None, labels, str(root), files=files)


def keras_cache_dir() -> Path:
    """Where downloaded archives are kept: Keras' own cache (KERAS_HOME)."""
    return Path(CacheSettings().keras_home or Path.home() / ".keras") / "datasets"


def download(url: str, dest: Path, md5: str | None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; verify md5 when known."""
    # Imported here: urllib.request and http.client are 40 ms of every producer's start,
    # and a producer reading a local archive or folder never downloads.
    from common.download import DownloadError, fetch

    try:
        return fetch(url, dest, md5=md5, timeout_s=timeout)
    except DownloadError as exc:
        raise DatasetUnavailable(
            f"could not download {exc}.\n"
            "Provide the data another way: set DATASET_SOURCE (or --dataset-source) to a "
            "directory in the official 'python version' layout or to a local copy of the "
            f"tar.gz, or put the archive at {dest}. DATASET=synthetic sends generated "
            "images without labels.") from None


def split_cache_dir() -> Path:
    """Where splits read from a tarball are kept as arrays (``XDG_CACHE_HOME``)."""
    return Path(CacheSettings().xdg_cache_home or Path.home() / ".cache") / "iot-pipeline" / "datasets"


def _split_cache_file(name: str, split: str, archive_path: Path) -> Path | None:
    try:
        st = archive_path.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{archive_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return split_cache_dir() / f"{name}-{split}-{key}.npz"


def _read_split_cache(path: Path | None):
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], [str(x) for x in z["labels"]]
    except (OSError, ValueError, KeyError) as exc:  # a damaged cache is read again from the archive
        log.warning("dataset cache %s unreadable (%s); reading the archive", path, exc)
        return None


def _write_split_cache(path: Path | None, images: np.ndarray, labels: list[str]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, labels=np.asarray(labels, dtype=str))
        tmp.replace(path)  # atomic: concurrent producers never read a half-written file
    except OSError as exc:  # a read-only home: no cache, no failure
        log.info("dataset cache not written (%s)", exc)


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
         seed: int = 0, max_bytes: int | None = None) -> Dataset:
    """Load a dataset split as uint8 images and class names (a folder: its files)."""
    if name == "folder":
        return load_folder(source, max_bytes)
    if name == "synthetic":
        n = limit or 1000
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        log.warning("DATASET=synthetic: %d generated images, no labels, accuracy will be null", n)
        return Dataset("synthetic", images, [None] * n, "generated")
    if name not in ARCHIVES:
        raise DatasetUnavailable(f"unknown DATASET {name!r}; use cifar10, cifar100, synthetic or folder")
    archive = ARCHIVES[name]
    source = source or archive.url
    if source == archive.url:
        cached_dir = keras_cache_dir() / archive.folder
        if cached_dir.is_dir():  # Keras's own load_data() extracts here
            source = str(cached_dir)
    reader, where = _reader(archive, source)
    cache = _split_cache_file(name, split, reader.path) if isinstance(reader, _TarReader) else None
    cached = _read_split_cache(cache)
    if cached is not None:
        images, labels = cached
        images = images[:limit]
        log.info("loaded %s %s split: %d images from %s (cached as arrays in %s)",
                 name, split, len(images), where, cache)
        return Dataset(name, images, labels[: len(images)], where)
    names = [n.decode() for n in reader.read(archive.meta)[archive.names_key]]
    chunks, labels = [], []
    complete = True  # every member of the split read (a limit may stop early)
    for member in archive.splits[split]:
        batch = reader.read(member)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        chunks.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(names[i] for i in batch[archive.label_key])
        if limit and sum(len(c) for c in chunks) >= limit and member != archive.splits[split][-1]:
            complete = False
            break
    images = np.concatenate(chunks)
    if cache is not None and complete and len(labels) == len(images):
        _write_split_cache(cache, images, labels)
    images = images[:limit]
    log.info("loaded %s %s split: %d images from %s", name, split, len(images), where)
    return Dataset(name, images, labels[: len(images)], where)
