"""The CIFAR VGGs with BatchNorm of RepDistiller / mdistiller: vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks of 3x3 convolutions (with bias) + BatchNorm + ReLU; max-pools between the first four blocks;
the classifier is a single ``classifier`` Linear(512, K). Inside a block the layers are numbered as in the
original ``nn.Sequential`` (conv, bn, relu, conv, bn, ...) whose last ReLU is dropped and applied in
``forward`` instead, so a block's keys are ``block{b}.{3j}.{weight,bias}`` (conv ``j``) and
``block{b}.{3j+1}.*`` (its BatchNorm). At 32x32 input the feature map is 4x4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FeatureClassifierNet
from ..layers import init_weights, reset_to_default_init
from ..registry import register_model
from .blocks import Stem, parse_stem

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Output channels of the convolutions in each of the five blocks.
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _conv_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """Conv-BN-ReLU for every width, without the final ReLU (``forward`` applies it)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(FeatureClassifierNet):
    """A CIFAR VGG with BatchNorm.

    Args:
        config: output channels of the convolutions of each of the five blocks.
        num_classes: classifier outputs.
        stem: ``"imagenet"`` keeps VGG's layers as they are for 224x224 input, as the official SDD CUB-200
            recipe does, so VGG runs its 3x3 convolutions at full resolution and ends on a 28x28 map there;
            the only change is that the classifier keeps PyTorch's default initialisation (the official code
            replaces it after initialising the network). That is what the published CUB VGG13 / VGG8 numbers
            were trained with.

    As in the original code, a fourth max-pool runs between blocks 3 and 4 only for 64x64 input
    (Tiny-ImageNet); otherwise the map of block 3 goes to block 4 unpooled.
    """

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"config must give the convolution widths of 5 blocks, got {len(config)}")
        in_channels = [3] + [widths[-1] for widths in config[:-1]]
        self.block0 = _conv_block(in_channels[0], config[0])
        self.block1 = _conv_block(in_channels[1], config[1])
        self.block2 = _conv_block(in_channels[2], config[2])
        self.block3 = _conv_block(in_channels[3], config[3])
        self.block4 = _conv_block(in_channels[4], config[4])
        self.classifier = nn.Linear(config[4][-1], num_classes)
        init_weights(self, linear_std=0.01)
        if parse_stem(stem) is Stem.IMAGENET:  # the official CUB code replaces the classifier after initialising
            reset_to_default_init(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tiny_imagenet = x.shape[2] == 64
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if tiny_imagenet:
            x = F.max_pool2d(x, 2)
        return F.relu(self.block4(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier


@register_model(family="cifar")
def vgg8(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> VGG:
    """VGG-8 with BatchNorm (mdistiller's ``vgg8_bn``): 3,965,028 parameters at 100 classes."""
    return VGG(_CONFIGS["vgg8"], num_classes, stem)


@register_model(family="cifar")
def vgg11(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> VGG:
    """VGG-11 with BatchNorm (``vgg11_bn``)."""
    return VGG(_CONFIGS["vgg11"], num_classes, stem)


@register_model(family="cifar")
def vgg13(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> VGG:
    """VGG-13 with BatchNorm (``vgg13_bn``), a CRD teacher."""
    return VGG(_CONFIGS["vgg13"], num_classes, stem)


@register_model(family="cifar")
def vgg16(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> VGG:
    """VGG-16 with BatchNorm (``vgg16_bn``)."""
    return VGG(_CONFIGS["vgg16"], num_classes, stem)


@register_model(family="cifar")
def vgg19(num_classes: int = 100, stem: Stem | str = Stem.CIFAR) -> VGG:
    """VGG-19 with BatchNorm (``vgg19_bn``)."""
    return VGG(_CONFIGS["vgg19"], num_classes, stem)
