"""Building blocks shared by the CIFAR architectures: the input stem choice, residual blocks, channel shuffle.

The residual blocks keep the layer names of the RepDistiller / mdistiller code (``conv1``, ``bn1``, ...), so
state_dicts written by that code load unchanged.
"""

from __future__ import annotations

from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "Stem", "channel_shuffle", "parse_stem", "projection_shortcut", "stem_conv"]


class Stem(StrEnum):
    """The first layer of a CIFAR-style network, chosen by the input resolution it is meant for."""

    CIFAR = "cifar"
    """The original layer for 32x32 input (a stride-1 convolution; MobileNetV2: a stride-2 3x3 convolution)."""

    IMAGENET = "imagenet"
    """The official SDD recipe for 224x224 input (CUB-200-2011): the first convolution becomes 7x7 with
    stride 2 and padding 3, with the same output channels; MobileNetV2 also gets a 2x2 max-pool after it.
    The official code swaps these layers (and the classifier of ResNets and VGG) in after initialising the
    network, so they keep PyTorch's default initialisation; the networks here do the same. Each
    architecture's docstring says exactly what it changes (VGG: only the classifier's initialisation)."""


def parse_stem(stem: Stem | str) -> Stem:
    """Turns ``"cifar"`` / ``"imagenet"`` (e.g. from a config file) into a :class:`Stem`, with a clear error."""
    try:
        return Stem(stem)
    except ValueError:
        choices = ", ".join(repr(s.value) for s in Stem)
        raise ValueError(f"stem must be one of {choices}, got {stem!r}") from None


def stem_conv(out_channels: int, stem: Stem | str, *, cifar_kernel_size: int = 3) -> nn.Conv2d:
    """The first convolution of a CIFAR-style network (bias-free, 3 input channels).

    ``Stem.CIFAR``: ``cifar_kernel_size`` x ``cifar_kernel_size``, stride 1, "same" padding (the original layer).
    ``Stem.IMAGENET``: 7x7, stride 2, padding 3 (the official CUB-200 recipe).
    """
    if parse_stem(stem) is Stem.IMAGENET:
        return nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Conv2d(3, out_channels, cifar_kernel_size, stride=1, padding=cifar_kernel_size // 2, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """A 1x1 convolution + BatchNorm for a residual shortcut that changes shape; ``None`` where identity fits."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class _ResidualBlock(nn.Module):
    """Common part of the residual blocks: the shortcut, stored under the name the original code used.

    The RepDistiller ``resnet`` family calls the projection ``downsample`` (and has none where the shortcut is
    the identity); the ``resnetv2`` family calls it ``shortcut`` (an empty ``nn.Sequential`` for the identity).
    Both give state_dict keys ``<name>.0.weight`` and ``<name>.1.*`` exactly where a projection exists.
    """

    _shortcut_name: str

    def _register_shortcut(self, name: str, in_planes: int, out_planes: int, stride: int) -> None:
        # Called after the residual branch is built, so the state_dict key order matches the original code.
        projection = projection_shortcut(in_planes, out_planes, stride)
        if projection is None and name == "shortcut":
            projection = nn.Sequential()
        self._shortcut_name = name
        self.add_module(name, projection)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        projection = getattr(self, self._shortcut_name)
        return x if projection is None else projection(x)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with BatchNorm, plus the shortcut; ReLU after the sum.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the projection shortcut).
        shortcut_name: ``"downsample"`` (``resnet`` family) or ``"shortcut"`` (``resnetv2`` family).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut_name: str = "shortcut") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self._register_shortcut(shortcut_name, in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BatchNorm, plus the shortcut; ReLU after the sum.

    Args:
        in_planes: input channels.
        planes: channels of the 3x3 convolution; the block outputs ``4 * planes``.
        stride: stride of the 3x3 convolution (and of the projection shortcut).
        shortcut_name: ``"downsample"`` (``resnet`` family) or ``"shortcut"`` (``resnetv2`` family).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut_name: str = "shortcut") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._register_shortcut(shortcut_name, in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self._shortcut(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleaves the channels of ``groups`` groups (``(B, g*n) -> (B, n*g)``)."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)
