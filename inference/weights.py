"""What every engine's loader shares, without importing any runtime: the loaded model's
record (:class:`LoadedModel`), the weights cache and its bounded downloads.

``inference.model`` (TensorFlow) and ``inference.torch_engine`` (PyTorch) both build a
:class:`LoadedModel`; a worker imports only the runtime of its ``MODEL_ENGINE``, so
nothing here may import TensorFlow or torch.

The weights cache is Keras' convention, for every engine: ``<KERAS_HOME>/models``, else
``~/.keras/models``, else ``/tmp/.keras/models`` (where Keras falls back when the home is
not writable).  A file is looked for in each, and downloaded into the first writable one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import urllib.parse
from typing import Callable, TypeVar

import numpy as np

from common.download import file_digest
from common.labels import CIFAR10_CLASSES
from common.settings import CacheSettings


log = logging.getLogger(__name__)

T = TypeVar("T")


class WeightsUnavailable(RuntimeError):
    """The weights asked for cannot be had (not cached and no network, no such file, or a
    file that is not what it claims to be)."""


def found_or_none(choice: str, named: str, find: Callable[[], T]) -> T | None:
    """What ``find`` returns for MODEL_WEIGHTS ``choice`` (``auto`` or ``named``, the engine's
    published weights).  Not found: ``named`` raises WeightsUnavailable; ``auto`` warns and
    gives None, and the engine falls back to random, untrained weights."""
    try:
        return find()
    except WeightsUnavailable as exc:
        if choice.lower() == named:
            raise
        log.warning("MODEL_WEIGHTS=auto: %s; falling back to RANDOM, UNTRAINED weights - "
                    "predictions are meaningless (model id says 'untrained')", exc)
        return None


@dataclasses.dataclass
class LoadedModel:
    id: str
    weights_source: str
    input_size: int
    untrained: bool
    # uint8 N x input_size x input_size x 3 -> float32 N x len(classes) probabilities (the
    # service resizes its images to input_size before; inference.api.decode_image)
    predict: Callable[[np.ndarray], np.ndarray]
    classes: tuple[str, ...] = CIFAR10_CLASSES
    # sha256 of the weights file (trained or published weights), else None
    weights_sha256: str | None = None


def cache_dirs() -> list[str]:
    """Where weights are cached, in lookup order (Keras' get_file: $KERAS_HOME or ~/.keras,
    falling back to /tmp/.keras)."""
    homes = [CacheSettings().keras_home, os.path.expanduser("~/.keras"), "/tmp/.keras"]
    return [os.path.join(h, "models") for h in homes if h]


def cached(file_name: str, directories: list[str] | None = None) -> str | None:
    """The path of ``file_name`` in the first cache directory that holds it, else None."""
    for directory in cache_dirs() if directories is None else directories:
        path = os.path.join(directory, file_name)
        if os.path.isfile(path):
            return path
    return None


def download_dir(directories: list[str] | None = None) -> str:
    """The first writable cache directory (created if needed), else WeightsUnavailable."""
    target = next((d for d in (cache_dirs() if directories is None else directories) if writable(d)), None)
    if target is None:
        raise WeightsUnavailable("no writable Keras cache directory")
    return target


def writable(directory: str) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def resolve_or_fail(url: str, timeout_s: float) -> None:
    """DNS lookups ignore socket timeouts; bound the lookup with a helper thread.  A URL
    without a host (file://) needs no lookup."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return
    outcome: list = []

    def lookup():
        try:
            outcome.append(socket.getaddrinfo(host, 443))
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name="weights-dns", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise WeightsUnavailable(f"cannot resolve {host} within {timeout_s:.1f}s")
    if isinstance(outcome[0], OSError):
        raise WeightsUnavailable(f"cannot resolve {host}: {outcome[0]}")


def file_sha256(path: str) -> str:
    return file_digest(path, "sha256")
