"""The base class of the package's own networks: a feature map, a linear classifier, and ``forward`` joining them.

Every network written in this package (the CIFAR family, MobileNetV1, the tiny test networks) derives from
:class:`FeatureClassifierNet`, so the interface of :mod:`sdd_lightning.models.interface` is implemented once:
a subclass only says how its feature map is computed and which layer is its classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureClassifierNet", "global_average_pool"]


def global_average_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """Averages a ``(B, C, h, w)`` map over its positions, giving ``(B, C)``.

    Uses the same operation as the scale-decoupled head's 1x1 grid, so the head's global region equals the
    network's own output bit for bit.
    """
    return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)


class FeatureClassifierNet(nn.Module):
    """A classification network split into a feature map and one linear classifier.

    Subclasses implement :meth:`forward_features` (the final convolutional map, after its last ReLU) and
    :meth:`get_classifier` (the final ``nn.Linear``, stored under whatever attribute name the original
    architecture used so that its checkpoints load). ``forward`` is then always
    ``classifier(global_average_pool(forward_features(x)))`` and returns logits only.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map ``(B, C, h, w)``; implemented by every subclass."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:
        """The final linear layer, which maps pooled features to logits; implemented by every subclass."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        """Channels ``C`` of the feature map (the classifier's input size)."""
        return self.get_classifier().in_features

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Logits of a feature map: global average pooling, then the classifier."""
        return self.get_classifier()(global_average_pool(feature_map))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of an image batch ``(B, 3, H, W)``."""
        return self.forward_head(self.forward_features(x))
