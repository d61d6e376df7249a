"""The one interface every network follows: a feature map and a linear classifier.

``forward_features(x) -> (B, C, h, w)`` (after the last ReLU), a linear classifier reached through
``get_classifier()`` (or a ``classifier`` attribute), and
``forward(x) == classifier(global_average_pool(forward_features(x)))``. The classifier is an ``nn.Linear``, or
a module that ends in one and maps the last dimension, exposing ``in_features`` / ``out_features`` (a vision
transformer's norm of the pooled tokens then its Linear:
:class:`~sdd_lightning.models.adapter.NormLinearClassifier`).
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


def get_classifier(model: nn.Module) -> nn.Module:
    """The network's classifier, from ``get_classifier()`` or a ``classifier`` attribute.

    Returns an ``nn.Linear``, or a module that maps the last dimension and exposes ``in_features`` and
    ``out_features`` (such as a norm followed by a Linear); anything else is refused.
    """
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
    if isinstance(classifier, nn.Linear) or (
        isinstance(classifier, nn.Module)
        and all(isinstance(getattr(classifier, size, None), int) for size in ("in_features", "out_features"))
    ):
        return classifier
    raise TypeError(
        f"{type(model).__name__}'s classifier must be an nn.Linear, or a module that maps the last dimension and "
        f"exposes in_features and out_features (e.g. a norm then a Linear), got {type(classifier).__name__}"
    )
