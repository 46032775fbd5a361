"""Checkpoints in the published format of chenyaofo/pytorch-cifar-models, made here: a
``torch.save`` of a CIFAR ResNet's ``state_dict`` with random values, named like the
published files (``<model>-<the first 8 hex digits of its sha256>.pt``).  The tests serve
them instead of the real ones, which cannot be downloaded here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable


def random_state_dict(model: str = "cifar10_resnet20", seed: int = 0) -> dict:
    """The network's state_dict with random weights and random (valid) batch-norm statistics,
    so that its predictions differ from MODEL_WEIGHTS=random's."""
    import torch

    from inference import cifar_resnet

    torch.manual_seed(seed)
    state = cifar_resnet.build(model).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith(("bn1.weight", "bn2.weight")) or key.endswith(".1.weight"):
            state[key] = torch.rand_like(value) * 0.5 + 0.25  # batch-norm scales, keeping logits moderate
    return state


def write_checkpoint(directory: Path, model: str = "cifar10_resnet20", seed: int = 0,
                     edit: Callable[[dict], None] | None = None) -> Path:
    """Write a checkpoint of ``model`` into ``directory`` under its published-style name
    (``edit`` may change the state_dict first) and return its path."""
    import torch

    state = random_state_dict(model, seed)
    if edit is not None:
        edit(state)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f"{model}.pt.tmp"
    torch.save(state, staging)
    sha = hashlib.sha256(staging.read_bytes()).hexdigest()
    path = directory / f"{model}-{sha[:8]}.pt"
    staging.replace(path)
    return path
