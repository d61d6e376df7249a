"""The CIFAR ResNets of RepDistiller / mdistiller: resnet8 ... resnet110, resnet8x4, resnet32x4.

Three stages of basic blocks on a 3x3 stem; depth ``6n + 2`` gives ``n`` blocks a stage. State_dict keys:
``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``layer{s}.0.downsample.{0,1}`` where a
stage changes shape, and the classifier ``fc``. At 32x32 input the feature map is 8x8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FeatureClassifierNet
from ..layers import init_weights, reset_to_default_init
from ..registry import register_model
from .blocks import BasicBlock, Stem, parse_stem, stem_conv

__all__ = [
    "CifarResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
]

_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


class CifarResNet(FeatureClassifierNet):
    """A three-stage CIFAR ResNet of basic blocks.

    Args:
        depth: ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        widths: channels of the stem and of the three stages, e.g. ``(16, 16, 32, 64)``.
        num_classes: classifier outputs.
        stem: ``Stem.CIFAR`` (3x3 stride-1 ``conv1``; 8x8 map at 32x32) or ``Stem.IMAGENET`` (7x7 stride-2
            ``conv1``, the official CUB-200 recipe; 28x28 map at 224x224).
    """

    def __init__(
        self, depth: int, widths: Sequence[int], num_classes: int = 100, stem: Stem | str = Stem.CIFAR
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must give the stem and three stage widths, got {tuple(widths)}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = stem_conv(widths[0], stem)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self._in_planes = widths[0]
        self.layer1 = self._make_stage(widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(widths[3], blocks_per_stage, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)
        if parse_stem(stem) is Stem.IMAGENET:  # the official CUB code replaces both after initialising
            reset_to_default_init(self.conv1, self.fc)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self._in_planes, planes, stride if i == 0 else 1, shortcut_name="downsample"))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def get_classifier(self) -> nn.Linear:
        return self.fc


@register_model(family="cifar")
def resnet8(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-8 (widths 16-16-32-64): 83,892 parameters at 100 classes."""
    return CifarResNet(8, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet14(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-14 (widths 16-16-32-64)."""
    return CifarResNet(14, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet20(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-20 (widths 16-16-32-64)."""
    return CifarResNet(20, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet32(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-32 (widths 16-16-32-64)."""
    return CifarResNet(32, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet44(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-44 (widths 16-16-32-64)."""
    return CifarResNet(44, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet56(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-56 (widths 16-16-32-64), a CRD teacher."""
    return CifarResNet(56, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet110(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-110 (widths 16-16-32-64), a CRD teacher."""
    return CifarResNet(110, _NARROW, num_classes, stem)


@register_model(family="cifar")
def resnet8x4(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-8x4 (widths 32-64-128-256), the usual student of ResNet-32x4."""
    return CifarResNet(8, _WIDE, num_classes, stem)


@register_model(family="cifar")
def resnet32x4(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNet:
    """ResNet-32x4 (widths 32-64-128-256), a CRD teacher."""
    return CifarResNet(32, _WIDE, num_classes, stem)
