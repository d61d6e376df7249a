"""torchvision's ImageNet ResNet-18/34/50 with the feature-map / classifier interface.

:class:`ImageNetResNet` is ``torchvision.models.ResNet`` itself (same modules, same state_dict keys ``conv1``,
``bn1``, ``layer1..4``, ``fc``), plus ``forward_features`` and ``get_classifier``. Pretrained weights come
through torchvision's weights API (``weights="IMAGENET1K_V1"``, ``"DEFAULT"`` or a ``ResNet*_Weights``
member), downloaded by torchvision into its cache on first use; that needs a network connection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, ResNet34_Weights, ResNet50_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..base import FeatureClassifierNet
from ..registry import register_model

__all__ = ["ImageNetResNet", "imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50"]

_OPTIONS = "torchvision ResNets take num_classes, weights, progress and torchvision.models.ResNet's arguments."


class ImageNetResNet(FeatureClassifierNet, ResNet):
    """torchvision's ResNet: the feature map is the output of ``layer4`` (7x7 at 224x224), the classifier ``fc``.

    Takes the arguments of ``torchvision.models.ResNet``. ``forward`` is the interface's
    ``fc(global_average_pool(forward_features(x)))``, which computes what torchvision's forward computes.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def get_classifier(self) -> nn.Linear:
        return self.fc


def _build(
    block: type[BasicBlock | Bottleneck],
    layers: list[int],
    weights_enum: type[WeightsEnum],
    weights: WeightsEnum | str | None,
    num_classes: int,
    progress: bool,
    **kwargs: Any,
) -> ImageNetResNet:
    """Builds the network and, if ``weights`` is given, loads torchvision's pretrained state_dict into it."""
    if weights is not None:
        try:
            weights = weights_enum.verify(weights)
        except KeyError:
            choices = ", ".join(["DEFAULT", *weights_enum.__members__])
            raise ValueError(
                f"unknown weights {weights!r} for {weights_enum.__name__}; choose from {choices}"
            ) from None
        categories = len(weights.meta["categories"])
        if num_classes != categories:
            raise ValueError(
                f"weights {weights} have a {categories}-class classifier, but num_classes={num_classes}; build with "
                f"num_classes={categories} (and replace `fc` yourself to fine-tune on another class count)"
            )
    model = ImageNetResNet(block, layers, num_classes=num_classes, **kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


@register_model(family="imagenet", options=_OPTIONS)
def imagenet_resnet18(
    num_classes: int = 1000, weights: ResNet18_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ImageNetResNet:
    """torchvision's ResNet-18 (11,689,512 parameters at 1000 classes), optionally with pretrained weights."""
    return _build(BasicBlock, [2, 2, 2, 2], ResNet18_Weights, weights, num_classes, progress, **kwargs)


@register_model(family="imagenet", options=_OPTIONS)
def imagenet_resnet34(
    num_classes: int = 1000, weights: ResNet34_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ImageNetResNet:
    """torchvision's ResNet-34 (21,797,672 parameters), the official SDD ImageNet teacher of ResNet-18."""
    return _build(BasicBlock, [3, 4, 6, 3], ResNet34_Weights, weights, num_classes, progress, **kwargs)


@register_model(family="imagenet", options=_OPTIONS)
def imagenet_resnet50(
    num_classes: int = 1000, weights: ResNet50_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ImageNetResNet:
    """torchvision's ResNet-50 (25,557,032 parameters), the official SDD ImageNet teacher of MobileNetV1.

    The SDD paper's teacher is torchvision's original ``IMAGENET1K_V1`` checkpoint (76.13 % top-1).
    """
    return _build(Bottleneck, [3, 4, 6, 3], ResNet50_Weights, weights, num_classes, progress, **kwargs)
