"""The CIFAR architectures of RepDistiller / mdistiller, key-compatible with their checkpoints.

Every constructor takes ``num_classes`` and ``stem`` (:class:`Stem`: ``"cifar"`` for 32x32 input, the
default; ``"imagenet"`` for 224x224 input as in the official CUB-200 recipe).
"""

from .blocks import Stem
from .mobilenetv2 import MobileNetV2, mobile_half
from .resnet import (
    CifarResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from .resnetv2 import CifarResNetV2, ResNet18, ResNet50
from .shufflenetv1 import ShuffleNetV1, ShuffleV1
from .shufflenetv2 import ShuffleNetV2, ShuffleV2
from .vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "VGG",
    "CifarResNet",
    "CifarResNetV2",
    "MobileNetV2",
    "ResNet18",
    "ResNet50",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "Stem",
    "WideResNet",
    "mobile_half",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
