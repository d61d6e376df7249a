"""The CIFAR MobileNetV2 of RepDistiller / mdistiller (registered as ``MobileNetV2``: the width-0.5 ``mobile_half``).

A 3x3 stride-2 stem, seven groups of inverted residual blocks (expansion ``T``; the second group keeps
stride 1 for CIFAR), a 1x1 convolution to 1280 channels and the classifier ``classifier.0`` (a Linear inside
an ``nn.Sequential``, as in the original). State_dict keys: ``conv1.{0,1}``, ``blocks.{g}.{i}.conv.{0..7}``,
``conv2.{0,1}``, ``classifier.0``. At 32x32 input the feature map is 2x2.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import FeatureClassifierNet
from ..layers import conv_bn, init_weights, reset_to_default_init
from ..registry import register_model
from .blocks import Stem, parse_stem

__all__ = ["InvertedResidual", "MobileNetV2", "mobile_half"]


class InvertedResidual(nn.Module):
    """1x1 expansion (always present, even at ratio 1) - 3x3 depthwise - 1x1 linear projection.

    The residual connection exists where the stride is 1 and the channels do not change. Keys ``conv.{0..7}``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn(in_channels, hidden, 1),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *conv_bn(hidden, out_channels, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(FeatureClassifierNet):
    """MobileNetV2 for CIFAR.

    Args:
        expand_ratio: expansion ``T`` of the inverted residual blocks (6 in ``mobile_half``).
        width_mult: channel multiplier (0.5 in ``mobile_half``); the last layer keeps 1280 channels unless
            ``width_mult > 1``.
        num_classes: classifier outputs.
        stem: ``Stem.CIFAR`` (3x3 stride-2 ``conv1``; 2x2 map at 32x32) or ``Stem.IMAGENET`` (7x7 stride-2
            convolution followed by a 2x2 max-pool, the official CUB-200 recipe; 7x7 map at 224x224).
    """

    # expansion (None: the configurable T), output channels, blocks, stride of the first block
    _SETTINGS = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(
        self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100, stem: Stem | str = Stem.CIFAR
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        if parse_stem(stem) is Stem.IMAGENET:
            self.conv1 = nn.Sequential(*conv_bn(3, channels, 7, 2), nn.MaxPool2d(2))
        else:
            self.conv1 = conv_bn(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for ratio, width, n, first_stride in self._SETTINGS:
            out_channels = int(width * width_mult)
            group = []
            for i in range(n):
                stride = first_stride if i == 0 else 1
                group.append(InvertedResidual(channels, out_channels, stride, ratio or expand_ratio))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn(channels, last_channels, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_weights(self, linear_std=0.01)
        if parse_stem(stem) is Stem.IMAGENET:  # the official CUB code replaces the stem after initialising
            reset_to_default_init(self.conv1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.conv2(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[0]


@register_model("MobileNetV2", family="cifar")
def mobile_half(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> MobileNetV2:
    """MobileNetV2 with ``T = 6`` and width 0.5 (mdistiller's ``MobileNetV2``): 812,836 parameters at 100 classes."""
    return MobileNetV2(6, 0.5, num_classes, stem)
