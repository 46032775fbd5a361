"""The CIFAR-native ResNets (He et al. 2016, section 4.2: 6n+2 layers, 16/32/64 filters,
32x32 input) that ``MODEL_ENGINE=torch`` serves, with the pretrained checkpoints that
chenyaofo/pytorch-cifar-models publishes for CIFAR-10 and CIFAR-100.

The modules and parameters are named and shaped exactly as upstream's
``pytorch_cifar_models/resnet.py`` (``CifarResNet`` with ``BasicBlock``), so that a
published checkpoint - a ``torch.save`` of the network's ``state_dict`` - loads as it is,
key for key, with ``strict=True``: ``conv1``/``bn1``, ``layer1``..``layer3`` of
``BasicBlock`` (``conv1``, ``bn1``, ``conv2``, ``bn2``, and for the first block of
``layer2`` and ``layer3`` a ``downsample`` of a 1x1 convolution ``0`` and a batch norm
``1``), then ``fc``.

Each published file is named ``<model>-<the first 8 hex digits of its sha256>.pt`` (the
torch.hub convention, which its ``check_hash`` verifies); :data:`CHECKPOINTS` holds those
names as upstream's URL tables list them.

Preprocessing, as upstream trained and evaluated them (chenyaofo/image-classification-codebase,
conf/cifar10.conf and conf/cifar100.conf: ``ToTensor`` then ``Normalize(mean, std)``):
pixels / 255, then per-channel ``(x - mean) / std`` with the training set's statistics
(:data:`NORMALIZATION`), at 32x32.

Importing this module imports torch: only the worker's loader thread
(``inference.torch_engine``) and training (``inference.train_torch``) import it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from common.labels import CIFAR10_CLASSES, CIFAR100_CLASSES

RELEASE_URL = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/"
IMAGE_SIZE = 32

# Blocks per stage: depth = 6n + 2.
BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}

# model -> published file name (upstream's cifar10/cifar100_pretrained_weight_urls).
CHECKPOINTS = {
    "cifar10_resnet20": "cifar10_resnet20-4118986f.pt",
    "cifar10_resnet32": "cifar10_resnet32-ef93fc4d.pt",
    "cifar10_resnet44": "cifar10_resnet44-2a3cabcb.pt",
    "cifar10_resnet56": "cifar10_resnet56-187c023a.pt",
    "cifar100_resnet20": "cifar100_resnet20-23dac2f1.pt",
    "cifar100_resnet32": "cifar100_resnet32-84213ce6.pt",
    "cifar100_resnet44": "cifar100_resnet44-ffe32858.pt",
    "cifar100_resnet56": "cifar100_resnet56-f2eff4c8.pt",
}
MODELS = tuple(CHECKPOINTS)

# dataset -> (mean, std) per RGB channel of pixels in 0..1, from upstream's training configuration.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}
CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a model name means: its dataset (classes, normalization) and its depth."""

    name: str
    dataset: str
    blocks: int

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES[self.dataset]

    @property
    def file_name(self) -> str:
        return CHECKPOINTS[self.name]

    @property
    def sha256_prefix(self) -> str:
        return sha256_prefix_of(self.file_name)


def spec(name: str) -> Spec:
    """The :class:`Spec` of ``cifar10_resnet20`` ... ``cifar100_resnet56``, else ValueError."""
    if name not in CHECKPOINTS:
        raise ValueError(f"MODEL={name!r} is not a CIFAR ResNet: one of {', '.join(MODELS)}")
    dataset, arch = name.split("_", 1)
    return Spec(name, dataset, BLOCKS[arch])


def sha256_prefix_of(file_name: str) -> str | None:
    """The hex digits after the last ``-`` of a checkpoint's file name (torch.hub's
    ``<name>-<sha256 prefix>.<ext>``), or None when the name carries none: at least 8
    lower-case hex digits, so that a date or a version is not taken for one."""
    stem = file_name.rsplit("/", 1)[-1].split(".", 1)[0]
    _, dash, tail = stem.rpartition("-")
    if dash and len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return tail
    return None


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut; ``downsample`` (1x1 convolution
    and batch norm) adapts the shortcut where the block halves the size or widens."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3x3 convolution to 16 channels, three stages of ``blocks`` BasicBlocks (16, 32, 64
    channels; the last two halve the size), global average pooling, a linear classifier.
    Outputs logits."""

    def __init__(self, blocks: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        # Upstream's initialisation (it matters only to MODEL_WEIGHTS=random and to training).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride),
                             *(BasicBlock(planes, planes) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(name: str) -> CifarResNet:
    """The network of ``name`` (``cifar10_resnet20`` ...), freshly initialised."""
    s = spec(name)
    return CifarResNet(s.blocks, num_classes=len(s.classes))


def normalizer(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of ``dataset`` as 1 x 3 x 1 x 1 tensors, for pixels in 0..1."""
    mean, std = NORMALIZATION[dataset]
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def preprocess(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images N x H x W x 3 -> the network's float32 input N x 3 x H x W: pixels / 255,
    then ``(x - mean) / std`` (upstream's ToTensor + Normalize).  The one preprocessing of
    serving (inference.torch_engine) and training (inference.train_torch)."""
    # A copy: torch.from_numpy needs a writable array, and the caller's stays untouched.
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std
