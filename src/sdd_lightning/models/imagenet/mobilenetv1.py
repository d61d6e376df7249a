"""MobileNetV1 for ImageNet, key-compatible with mdistiller's ``MobileNetV1`` (the official SDD ImageNet student).

A stride-2 3x3 stem and 13 depthwise-separable layers (3x3 depthwise + 1x1 pointwise, each with BatchNorm and
ReLU), 1024 channels at the end, classifier ``fc``. State_dict keys: ``model.0.{0,1}`` (stem),
``model.{1..13}.{0,1,3,4}`` (depthwise conv, BN, pointwise conv, BN), ``fc``. At 224x224 input the feature map
is 7x7.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import FeatureClassifierNet
from ..layers import conv_bn
from ..registry import register_model

__all__ = ["MobileNetV1"]

# (output channels, stride) of the 13 depthwise-separable layers.
_LAYERS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU (keys ``0, 1`` and ``3, 4``)."""
    return nn.Sequential(
        *conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
        *conv_bn(in_channels, out_channels, 1),
    )


@register_model(family="imagenet")
class MobileNetV1(FeatureClassifierNet):
    """MobileNetV1 (width 1.0): 4,231,976 parameters at 1000 classes.

    Args:
        num_classes: classifier outputs (mdistiller's version is fixed at 1000).

    The original ends ``model`` with an ``AvgPool2d(7)`` (no parameters); here pooling is the interface's
    global average, which is the same at 224x224 and works at any input size.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [conv_bn(3, 32, 3, 2)]
        channels = 32
        for out_channels, stride in _LAYERS:
            layers.append(_depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc
