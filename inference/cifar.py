"""CIFAR-10 for training, as arrays: a thin view over the producer's loader.

``common.dataset`` already reads the official archive (tarball, directory or
URL, md5-checked download); training needs the same images with class indices.
"""

from __future__ import annotations

import numpy as np

from common import dataset
from common.labels import CIFAR10_CLASSES


def load_cifar10(source: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 N x 32 x 32 x 3, labels int64 N) of ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    data = dataset.load("cifar10", source, split)
    index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    return data.images, np.asarray([index[name] for name in data.labels], dtype=np.int64)
