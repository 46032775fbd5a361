"""``MODEL_ENGINE=torch``: a CIFAR-native ResNet (``inference.cifar_resnet``) run by PyTorch,
served like the TensorFlow ResNet50 (the same :class:`~inference.weights.LoadedModel`, so the
same API, dynamic batcher, ``/v1/model``, metrics and health checks).

``MODEL`` names the network (``cifar10_resnet20`` ... ``cifar100_resnet56``); ``MODEL_WEIGHTS``:

* ``pretrained``: the checkpoint chenyaofo/pytorch-cifar-models publishes for ``MODEL``,
  from the weights cache (Keras' convention, :mod:`inference.weights`), else downloaded
  into it from ``TORCH_WEIGHTS_URL`` with a progress bar, every socket operation bounded by
  ``WEIGHTS_DOWNLOAD_TIMEOUT_S``.  The file must hash to the sha256 prefix in its name (a
  damaged cached copy is downloaded again; a download that does not match is discarded).
  Model id ``<model>-pretrained-32``.  No fallback: unavailable weights are an error.
* a path to a checkpoint file (a ``torch.save`` of the network's ``state_dict``, as
  published or as ``inference.train`` writes): served as it is; a file named like a
  published one (``<name>-<8+ hex digits>.pt``) must hash to that prefix, as torch.hub
  checks.  Model id ``<model>-<sha256[:8]>-32``.
* ``random``: upstream's initialisation with a fixed seed - an *untrained* network whose
  labels mean nothing; its id says ``untrained``.
* ``auto`` (default): ``pretrained`` if the weights can be had, else ``random`` with a
  WARNING.  Decision: the same as the TensorFlow engine's ``auto`` (ImageNet weights, else
  random), for consistency: a host without internet and without cached weights still
  serves, and the ``untrained`` model id (in every result, every run summary and
  ``/v1/model``) says what the labels are worth.  ``pretrained`` is the setting that
  refuses to serve without the real weights.

Every checkpoint is loaded whole or not at all: it must hold exactly the network's tensors,
each of the network's shape (:func:`load_checkpoint` names the missing, extra and misshaped
ones), then ``load_state_dict(strict=True)``.  ``torch.load(weights_only=True)`` unpickles
tensors and containers only, never code.

Preprocessing as upstream: pixels / 255, normalized with the training set's mean and std
(``inference.cifar_resnet.NORMALIZATION``), 32x32 (the service resizes other sizes while
decoding).  The output is softmax probabilities over ``classes``: the 10 CIFAR-10 classes
or the 100 CIFAR-100 fine labels.

Importing this module imports torch, never TensorFlow: only the worker's loader thread
(``inference.serving``) imports it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.download import DownloadError, checksum_problem, fetch
from common.settings_service import CIFAR_RESNET_RELEASE_URL
from inference import cifar_resnet
from inference.weights import (LoadedModel, WeightsUnavailable, cached, download_dir, file_sha256, found_or_none,
                               resolve_or_fail)

log = logging.getLogger(__name__)

RANDOM_SEED = 0


class CheckpointMismatch(WeightsUnavailable):
    """A checkpoint that is not the network's state_dict: missing, extra or misshaped tensors."""


def configure_threads(intra: int, inter: int) -> None:
    """The TensorFlow engine's thread settings, applied to torch: ``intra``
    (TF_INTRA_OP_THREADS) threads per operation, else the CPUs this process may run on (the
    number TensorFlow uses); ``inter`` (TF_INTER_OP_THREADS) inter-op threads when given."""
    try:
        threads = intra or len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        threads = intra or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if inter:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as exc:  # torch allows it once, before any inter-op work (tests, second app)
            log.warning("torch inter-op threads not applied: %s", exc)


def find_pretrained(spec: cifar_resnet.Spec, base_url: str = CIFAR_RESNET_RELEASE_URL, *,
                    download_timeout_s: float = 3.0, download: bool = True, progress: bool = True) -> str:
    """The path of ``spec``'s published checkpoint, verified against its sha256 prefix: from
    the weights cache, else downloaded into it from ``base_url`` + its file name.  Raises
    WeightsUnavailable quickly when it cannot be had."""
    name, prefix = spec.file_name, spec.sha256_prefix
    path = cached(name)
    if path is not None and checksum_problem(path, sha256_prefix=prefix) is None:
        return path
    if not download:
        raise WeightsUnavailable(f"{name} not in the weights cache" if path is None
                                 else f"cached {path} does not hash to its name's prefix {prefix}")
    url = base_url.rstrip("/") + "/" + name
    target = Path(path) if path is not None else Path(download_dir()) / name
    resolve_or_fail(url, download_timeout_s)
    try:
        fetch(url, target, sha256_prefix=prefix, timeout_s=download_timeout_s, progress=progress)
    except DownloadError as exc:
        raise WeightsUnavailable(f"cannot download the {spec.name} weights: {exc}") from None
    return str(target)


def load_checkpoint(net: torch.nn.Module, path: str) -> None:
    """Load ``path`` (a saved state_dict) into ``net``, all of it or nothing.  The file must
    hold exactly ``net``'s tensors, each of ``net``'s shape: anything else raises
    :class:`CheckpointMismatch` naming the tensors, before any is copied."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn, foreign or unsafe file: pickle, zip and torch errors
        raise CheckpointMismatch(f"{path}: not a checkpoint torch can read ({type(exc).__name__}: "
                                 f"{str(exc)[:300]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{path}: not a state_dict (a mapping of tensor names to tensors)")
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} (the network's: {tuple(v.shape)})"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or extra or misshaped:
        parts = [f"{label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''} ({len(names)})"
                 for label, names in (("missing", missing), ("extra", extra), ("misshaped", misshaped)) if names]
        raise CheckpointMismatch(f"{path} is not a {type(net).__name__} of this shape: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def _predictor(net: torch.nn.Module, dataset: str, input_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The serving function: uint8 images N x input_size x input_size x 3 in, float32
    probabilities N x classes out, with upstream's preprocessing."""
    mean, std = cifar_resnet.normalizer(dataset)
    net.eval()

    def predict(images: np.ndarray) -> np.ndarray:
        shape = np.shape(images)
        if len(shape) != 4 or tuple(shape[1:]) != (input_size, input_size, 3):
            raise ValueError(f"images must be N x {input_size} x {input_size} x 3 (the model's input size), "
                             f"not {' x '.join(map(str, shape))}")
        with torch.inference_mode():
            probs = torch.softmax(net(cifar_resnet.preprocess(images, mean, std)), dim=1)
        return probs.numpy().astype(np.float32, copy=False)

    predict.torch_model = net  # for inference.train and the tests
    return predict


def load_model(name: str, weights: str = "auto", input_size: int | None = None, *,
               download_timeout_s: float = 3.0, base_url: str = CIFAR_RESNET_RELEASE_URL,
               progress: bool = True) -> LoadedModel:
    """The CIFAR ResNet ``name`` with ``weights`` (auto | pretrained | random | path); see the
    module docstring."""
    spec = cifar_resnet.spec(name)
    size = input_size or cifar_resnet.IMAGE_SIZE
    if size != cifar_resnet.IMAGE_SIZE:
        raise ValueError(f"the CIFAR ResNets take {cifar_resnet.IMAGE_SIZE}x{cifar_resnet.IMAGE_SIZE} images, "
                         f"not {size}")
    choice = weights.strip()
    net = cifar_resnet.build(name)
    if choice.lower() in ("auto", "pretrained"):
        path = found_or_none(choice, "pretrained", lambda: find_pretrained(
            spec, base_url, download_timeout_s=download_timeout_s, progress=progress))
        if path is None:
            choice = "random"
        else:
            load_checkpoint(net, path)
            return LoadedModel(f"{name}-pretrained-{size}", f"pretrained:{path}", size, False,
                               _predictor(net, spec.dataset, size), classes=spec.classes,
                               weights_sha256=file_sha256(path))
    if choice.lower() == "random":
        torch.manual_seed(RANDOM_SEED)
        net = cifar_resnet.build(name)
        return LoadedModel(f"{name}-untrained-{size}", f"random:seed={RANDOM_SEED}", size, True,
                           _predictor(net, spec.dataset, size), classes=spec.classes)
    if not os.path.isfile(choice):
        raise WeightsUnavailable(f"MODEL_WEIGHTS={choice!r}: no such file (and not auto|pretrained|random)")
    prefix = cifar_resnet.sha256_prefix_of(choice)
    if prefix and (problem := checksum_problem(choice, sha256_prefix=prefix)):
        raise WeightsUnavailable(f"MODEL_WEIGHTS={choice!r}: {problem}: the file is not the one its name "
                                 "claims (damaged, or renamed)")
    load_checkpoint(net, choice)
    sha = file_sha256(choice)
    return LoadedModel(f"{name}-{sha[:8]}-{size}", f"file:{os.path.abspath(choice)}", size, False,
                       _predictor(net, spec.dataset, size), classes=spec.classes, weights_sha256=sha)
