"""A small reader for the official CIFAR-10 "python version" archive (used by train.py).

The archive (``cifar-10-python.tar.gz``) holds ``cifar-10-batches-py/`` with
``data_batch_1`` ... ``data_batch_5`` and ``test_batch``: pickled dicts with
``b'data'`` (uint8, N x 3072: 1024 red, 1024 green, 1024 blue values, each plane a
32x32 image in row-major order) and ``b'labels'`` (N ints).  ``b'filenames'`` is
not needed.  The source may be the tar.gz itself, the ``cifar-10-batches-py``
directory or a directory containing it.

The batches are pickles: read only archives you trust (the official one or a copy).
This module stays independent of ``producer/dataset.py`` on purpose.
"""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def _decode(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{name}: missing key {exc.args[0]!r}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{name}: unexpected shapes data={data.shape} labels={labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{name}: labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NCHW planes -> NHWC
    return np.ascontiguousarray(images), labels


def _batch_dir(source: str) -> str:
    if os.path.basename(os.path.normpath(source)) == BATCH_DIR:
        return source
    inner = os.path.join(source, BATCH_DIR)
    return inner if os.path.isdir(inner) else source


def load_cifar10(source: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 N x 32 x 32 x 3, labels int64 N) of ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    parts = []
    if os.path.isdir(source):
        directory = _batch_dir(source)
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} not found (is {source} a CIFAR-10 python archive?)")
            with open(path, "rb") as fh:
                parts.append(_decode(pickle.load(fh, encoding="bytes"), name))
    elif os.path.isfile(source):
        with tarfile.open(source, "r:*") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise FileNotFoundError(f"{name} not found in {source}")
                with tar.extractfile(members[name]) as fh:
                    parts.append(_decode(pickle.load(fh, encoding="bytes"), name))
    else:
        raise FileNotFoundError(f"dataset source {source!r} does not exist")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels
