"""The CIFAR ``resnetv2`` family of RepDistiller / mdistiller: ResNet18 and ResNet50 for 32x32 input.

Four stages (64, 128, 256, 512 planes) on a 3x3 stride-1 stem, no max-pool. State_dict keys: ``conv1``,
``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3]}``, ``layer{s}.{i}.shortcut.{0,1}`` where a block
changes shape, and the classifier ``linear``. At 32x32 input the feature map is 4x4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FeatureClassifierNet
from ..layers import init_weights, reset_to_default_init
from ..registry import register_model
from .blocks import BasicBlock, Bottleneck, Stem, parse_stem, stem_conv

__all__ = ["CifarResNetV2", "ResNet18", "ResNet50"]


class CifarResNetV2(FeatureClassifierNet):
    """A four-stage ResNet for CIFAR.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks in each of the four stages.
        num_classes: classifier outputs.
        stem: ``Stem.CIFAR`` (3x3 stride-1 ``conv1``; 4x4 map at 32x32) or ``Stem.IMAGENET`` (7x7 stride-2
            ``conv1``, no max-pool, the official CUB-200 recipe for ResNet50; 14x14 map at 224x224).
        zero_init_residual: start the last BatchNorm of every residual branch at zero.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int = 100,
        stem: Stem | str = Stem.CIFAR,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self._in_planes = 64
        self.conv1 = stem_conv(64, stem)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_stage(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_stage(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_stage(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_stage(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)
        if parse_stem(stem) is Stem.IMAGENET:  # the official CUB code replaces both after initialising
            reset_to_default_init(self.conv1, self.linear)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def _make_stage(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(block(self._in_planes, planes, stride if i == 0 else 1, shortcut_name="shortcut"))
            self._in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def get_classifier(self) -> nn.Linear:
        return self.linear


@register_model(family="cifar")
def ResNet18(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNetV2:
    """CIFAR ResNet-18 (basic blocks 2-2-2-2): 11,220,132 parameters at 100 classes."""
    return CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, stem)


@register_model(family="cifar")
def ResNet50(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> CifarResNetV2:
    """CIFAR ResNet-50 (bottlenecks 3-4-6-3), a CRD teacher: 23,705,252 parameters at 100 classes."""
    return CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, stem)
