"""ImageNet networks: torchvision's ResNet-18/34/50 and mdistiller's MobileNetV1, with the interface."""

from .mobilenetv1 import MobileNetV1
from .resnet import ImageNetResNet, imagenet_resnet18, imagenet_resnet34, imagenet_resnet50

__all__ = ["ImageNetResNet", "MobileNetV1", "imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50"]
