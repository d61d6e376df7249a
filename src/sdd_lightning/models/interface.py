"""The one interface every network follows: a feature map and a linear classifier.

``forward_features(x) -> (B, C, h, w)`` (after the last ReLU), a linear classifier reached through
``get_classifier()`` (or a ``classifier`` attribute), and
``forward(x) == classifier(global_average_pool(forward_features(x)))``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["FeatureClassifier", "get_classifier"]


@runtime_checkable
class FeatureClassifier(Protocol):
    """What the scale-decoupled head needs from a network."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def get_classifier(self) -> nn.Module: ...


def get_classifier(model: nn.Module) -> nn.Linear:
    """The network's final linear layer, from ``get_classifier()`` or a ``classifier`` attribute."""
    if hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
    elif hasattr(model, "classifier"):
        classifier = model.classifier
    else:
        raise TypeError(
            f"{type(model).__name__} has neither get_classifier() nor a classifier attribute; wrap it with "
            "sdd_lightning.models.FeatureClassifierAdapter or subclass DistillationModule and override "
            "student_features / teacher_features"
        )
    if not isinstance(classifier, nn.Linear):
        raise TypeError(
            f"{type(model).__name__}'s classifier must be a single nn.Linear, got {type(classifier).__name__}"
        )
    return classifier
