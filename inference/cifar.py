"""CIFAR-10 and CIFAR-100 for training, as arrays: a thin view over the producer's loader.

``common.dataset`` already reads the official archives (tarball, directory or
URL, md5-checked download); training needs the same images with class indices.
"""

from __future__ import annotations

import numpy as np

from common import dataset
from common.labels import CIFAR10_CLASSES, CIFAR100_CLASSES

CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


def load_cifar(name: str, source: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 N x 32 x 32 x 3, labels int64 N) of ``split`` ("train" or "test") of
    ``name`` ("cifar10" or "cifar100", whose labels are its 100 fine classes)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if name not in CLASSES:
        raise ValueError(f"dataset must be cifar10 or cifar100, not {name!r}")
    data = dataset.load(name, source, split)
    index = {label: i for i, label in enumerate(CLASSES[name])}
    return data.images, np.asarray([index[label] for label in data.labels], dtype=np.int64)


def load_cifar10(source: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_cifar` of CIFAR-10."""
    return load_cifar("cifar10", source, split)
