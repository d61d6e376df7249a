"""The CIFAR ShuffleNetV2 of RepDistiller / mdistiller (``ShuffleV2``: size 1, stages of 116-232-464 channels).

A 1x1 stem to 24 channels, three stages (a down-sampling unit then 3, 7, 3 basic units), a 1x1 convolution
to 1024 channels and the classifier ``linear``. State_dict keys: ``conv1``, ``bn1``,
``layer{1,2,3}.0.{conv1..conv5,bn1..bn5}`` (down-sampling unit), ``layer{s}.{i>0}.{conv1,bn1,conv2,bn2,
conv3,bn3}``, ``conv2``, ``bn2``, ``linear``. At 32x32 input the feature map is 4x4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FeatureClassifierNet
from ..registry import register_model
from .blocks import Stem, channel_shuffle, stem_conv

__all__ = ["BasicUnit", "DownUnit", "ShuffleNetV2", "ShuffleV2"]


class BasicUnit(nn.Module):
    """Splits the channels in half; one half passes, the other goes 1x1 - 3x3 depthwise - 1x1; then shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        passed, x = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([passed, out], dim=1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches on the whole input, concatenated and shuffled.

    Left: 3x3 depthwise (stride 2) - 1x1. Right: 1x1 - 3x3 depthwise (stride 2) - 1x1.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(FeatureClassifierNet):
    """ShuffleNetV2 for CIFAR.

    Args:
        out_channels: channels of the three stages and of the final 1x1 convolution.
        num_blocks: basic units after the down-sampling unit of each stage.
        num_classes: classifier outputs.
        stem: ``Stem.CIFAR`` (1x1 ``conv1``; 4x4 map at 32x32) or ``Stem.IMAGENET`` (7x7 stride-2 ``conv1``,
            the official CUB-200 recipe; 14x14 map at 224x224).
    """

    def __init__(
        self,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
        num_classes: int = 100,
        stem: Stem | str = Stem.CIFAR,
    ) -> None:
        super().__init__()
        self.conv1 = stem_conv(24, stem, cifar_kernel_size=1)
        self.bn1 = nn.BatchNorm2d(24)
        self.layer1 = self._make_stage(24, out_channels[0], num_blocks[0])
        self.layer2 = self._make_stage(out_channels[0], out_channels[1], num_blocks[1])
        self.layer3 = self._make_stage(out_channels[1], out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(DownUnit(in_channels, out_channels), *(BasicUnit(out_channels) for _ in range(blocks)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))

    def get_classifier(self) -> nn.Linear:
        return self.linear


@register_model(family="cifar")
def ShuffleV2(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> ShuffleNetV2:
    """ShuffleNetV2 (size 1; 116-232-464-1024 channels): 1,355,528 parameters at 100 classes."""
    return ShuffleNetV2(num_classes=num_classes, stem=stem)
