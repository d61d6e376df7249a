"""The Wide ResNets of RepDistiller / mdistiller: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks (BN-ReLU-conv twice) in three groups of widths ``16k, 32k, 64k`` for widen factor ``k``,
a final BN-ReLU, and the classifier ``fc``. State_dict keys: ``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,
bn2,conv2}``, ``block{g}.layer.0.convShortcut`` where a group changes width, ``bn1``, ``fc``. At 32x32 input
the feature map is 8x8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FeatureClassifierNet
from ..layers import init_weights, reset_to_default_init
from ..registry import register_model
from .blocks import Stem, parse_stem, stem_conv

__all__ = ["WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class PreActBlock(nn.Module):
    """WRN's basic block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the shortcut.

    Where the width or stride changes, the shortcut is a 1x1 convolution (``convShortcut``) applied to the
    pre-activated input, as in the original; otherwise it is the identity on the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:  # the original name, kept so checkpoints load
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(activated)
        return out + shortcut


class BlockGroup(nn.Module):
    """``n`` pre-activation blocks; only the first one changes width and stride (keys ``layer.{i}``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                PreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(FeatureClassifierNet):
    """WRN-``depth``-``widen_factor`` for CIFAR.

    Args:
        depth: ``6n + 4`` (16, 40, ...).
        widen_factor: channel multiplier ``k``.
        num_classes: classifier outputs.
        drop_rate: dropout between the two convolutions of each block (0 in the CRD teachers).
        stem: ``Stem.CIFAR`` (3x3 stride-1 ``conv1``; 8x8 map at 32x32) or ``Stem.IMAGENET`` (7x7 stride-2
            ``conv1``; 28x28 map at 224x224).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        stem: Stem | str = Stem.CIFAR,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = stem_conv(widths[0], stem)
        self.block1 = BlockGroup(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = BlockGroup(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = BlockGroup(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, zero_linear_bias=True)
        if parse_stem(stem) is Stem.IMAGENET:  # a replaced stem keeps PyTorch's default, as in the CUB code
            reset_to_default_init(self.conv1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc


@register_model(family="cifar")
def wrn_16_1(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> WideResNet:
    """WRN-16-1."""
    return WideResNet(16, 1, num_classes, stem=stem)


@register_model(family="cifar")
def wrn_16_2(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> WideResNet:
    """WRN-16-2."""
    return WideResNet(16, 2, num_classes, stem=stem)


@register_model(family="cifar")
def wrn_40_1(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, 1, num_classes, stem=stem)


@register_model(family="cifar")
def wrn_40_2(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> WideResNet:
    """WRN-40-2, a CRD teacher."""
    return WideResNet(40, 2, num_classes, stem=stem)
