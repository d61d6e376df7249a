"""Two small plain CNNs for fast tests and the quickstart: ``tiny_cnn`` (~30k parameters) and ``small_cnn`` (~0.56M).

Both are conv-BN-ReLU stacks ending on an 8x8 map at 32x32 input (any input size works: the classifier sees
the globally pooled map). State_dict keys: ``features.{i}.{0,1}`` and ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import FeatureClassifierNet
from .layers import conv_bn, init_weights
from .registry import register_model

__all__ = ["PlainCNN", "small_cnn", "tiny_cnn"]


class PlainCNN(FeatureClassifierNet):
    """A stack of 3x3 conv-BN-ReLU layers and a linear classifier.

    Args:
        widths: output channels of the layers.
        strides: stride of each layer (same length as ``widths``).
        num_classes: classifier outputs.
    """

    def __init__(self, widths: Sequence[int], strides: Sequence[int], num_classes: int = 10) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError(f"widths and strides must be non-empty and of equal length, got {widths}, {strides}")
        layers = []
        in_channels = 3
        for width, stride in zip(widths, strides, strict=True):
            layers.append(conv_bn(in_channels, width, 3, stride))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc


@register_model(family="tiny")
def tiny_cnn(num_classes: int = 10) -> PlainCNN:
    """3 layers (16-32-64 channels; strides 1-2-2): 30,196 parameters at 100 classes, 8x8 map at 32x32."""
    return PlainCNN((16, 32, 64), (1, 2, 2), num_classes)


@register_model(family="tiny")
def small_cnn(num_classes: int = 10) -> PlainCNN:
    """5 layers (32-64-128-128-256 channels; strides 1-2-1-2-1): 562,308 parameters at 100 classes, 8x8 map at 32x32."""
    return PlainCNN((32, 64, 128, 128, 256), (1, 2, 1, 2, 1), num_classes)
