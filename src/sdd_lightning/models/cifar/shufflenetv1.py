"""The CIFAR ShuffleNetV1 of RepDistiller / mdistiller (``ShuffleV1``: 3 groups, stages of 240-480-960 channels).

A 1x1 stem to 24 channels, three stages of shuffle units (4, 8, 4 blocks), the classifier ``linear``. The
first unit of a stage has stride 2, concatenates an average-pooled shortcut and so produces only
``out - in`` channels itself. State_dict keys: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,
conv3,bn3}``, ``linear``. At 32x32 input the feature map is 4x4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FeatureClassifierNet
from ..registry import register_model
from .blocks import Stem, channel_shuffle, stem_conv

__all__ = ["ShuffleNetV1", "ShuffleUnit", "ShuffleV1"]


class ShuffleUnit(nn.Module):
    """Grouped 1x1 - channel shuffle - 3x3 depthwise (strided) - grouped 1x1, with a shortcut.

    Stride 1: the shortcut is the identity and is added. Stride 2: the shortcut is a 3x3 average pool and is
    concatenated. A unit whose input has 24 channels (the stem's) uses an ungrouped first convolution.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        first_groups = 1 if in_planes == 24 else groups
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1(FeatureClassifierNet):
    """ShuffleNetV1 for CIFAR.

    Args:
        out_planes: output channels of the three stages.
        num_blocks: units in each stage.
        groups: groups of the 1x1 convolutions.
        num_classes: classifier outputs.
        stem: ``Stem.CIFAR`` (1x1 ``conv1``; 4x4 map at 32x32) or ``Stem.IMAGENET`` (7x7 stride-2 ``conv1``,
            the official CUB-200 recipe; 14x14 map at 224x224).
    """

    def __init__(
        self,
        out_planes: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        stem: Stem | str = Stem.CIFAR,
    ) -> None:
        super().__init__()
        self.conv1 = stem_conv(24, stem, cifar_kernel_size=1)
        self.bn1 = nn.BatchNorm2d(24)
        self._in_planes = 24
        self.layer1 = self._make_stage(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_stage(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_stage(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_stage(self, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
        units = []
        for i in range(blocks):
            if i == 0:  # strided; the pooled input is concatenated to the unit's own output
                units.append(ShuffleUnit(self._in_planes, out_planes - self._in_planes, 2, groups))
            else:
                units.append(ShuffleUnit(out_planes, out_planes, 1, groups))
            self._in_planes = out_planes
        return nn.Sequential(*units)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def get_classifier(self) -> nn.Linear:
        return self.linear


@register_model(family="cifar")
def ShuffleV1(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> ShuffleNetV1:
    """ShuffleNetV1 (groups 3; 240-480-960 channels; 4-8-4 units): 949,258 parameters at 100 classes."""
    return ShuffleNetV1(num_classes=num_classes, stem=stem)
