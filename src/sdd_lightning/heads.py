"""The scale-decoupled logit head: a network's own classifier applied to regions of its feature map.

For every scale ``m`` the final feature map is average-pooled onto an ``m x m`` grid; the classifier is
applied to every grid cell. Regions are ordered scale by scale and row-major within a scale, so with
``scales=(1, 2, 4)`` there are ``1 + 4 + 16 = 21`` regions and region 0 is the global one, whose
logits are exactly the network's ordinary output. The head has no parameters of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Pooling", "ScaleDecoupledHead", "num_regions", "validate_scales"]


class Pooling(StrEnum):
    """How the grid of each scale is pooled from the feature map."""

    EXACT = "exact"
    """Adaptive average pooling of the feature map, separately for every scale (the default)."""

    HIERARCHICAL = "hierarchical"
    """The official SDD code: pool to the largest scale first, then pool that grid to the smaller ones.

    Identical to ``EXACT`` when the map side is divisible by the largest scale; on e.g. a 7x7 map the
    bins overlap and even the "global" region is not the plain global average.
    """


def validate_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Checks a scale set and returns it as a tuple; raises a ``ValueError`` that says what to fix."""
    if isinstance(scales, int | str | bytes) or not hasattr(scales, "__iter__"):
        raise ValueError(f"scales must be a sequence of positive integers such as (1, 2, 4), got {scales!r}")
    scales = tuple(scales)
    if not scales:
        raise ValueError("scales is empty: give at least one scale, e.g. scales=(1,) for the plain global head")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"scales must be positive integers (grid sides such as 1, 2, 4), got {s!r} in {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must not repeat, got {scales!r}")
    return scales


def num_regions(scales: Sequence[int]) -> int:
    """Number of regions ``R = sum(m * m)`` a scale set produces."""
    return sum(s * s for s in validate_scales(scales))


class ScaleDecoupledHead(nn.Module):
    """Turns a feature map and a linear classifier into local logits ``(B, R, K)``.

    Pooling and the classifier are both linear, so the result equals pooling the logit map ``W f``.
    The head pools first (R region vectors are far fewer than the h*w map positions): every scale is
    pooled, the region vectors are concatenated and the classifier runs once on all of them. Region 0
    is the global region when ``scales[0] == 1`` (the usual case), and its logits are what the
    cross-entropy loss uses: the classifier never runs twice on the same features.

    Args:
        scales: grid sides, e.g. ``(1, 2, 4)``; ``(1,)`` is the plain global head.
        pooling: ``Pooling.EXACT`` (default) or ``Pooling.HIERARCHICAL`` (the official code's variant).
    """

    def __init__(self, scales: Sequence[int] = (1, 2, 4), pooling: Pooling | str = Pooling.EXACT) -> None:
        super().__init__()
        self.scales = validate_scales(scales)
        try:
            self.pooling = Pooling(pooling)
        except ValueError:
            choices = ", ".join(p.value for p in Pooling)
            raise ValueError(f"pooling must be one of {choices}, got {pooling!r}") from None

    @property
    def num_regions(self) -> int:
        """``R``, the number of regions per image."""
        return sum(s * s for s in self.scales)

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Region vectors ``(B, R, C)`` of a feature map ``(B, C, h, w)``."""
        if feature_map.dim() != 4:
            raise ValueError(f"expected a feature map of shape (B, C, h, w), got shape {tuple(feature_map.shape)}")
        if self.pooling is Pooling.HIERARCHICAL:
            finest = F.adaptive_avg_pool2d(feature_map, max(self.scales))
            grids = [F.adaptive_avg_pool2d(finest, s) for s in self.scales]
        else:
            grids = [F.adaptive_avg_pool2d(feature_map, s) for s in self.scales]
        # (B, C, s, s) -> (B, C, s*s), row-major within a scale; concatenated scale by scale.
        regions = torch.cat([g.flatten(2) for g in grids], dim=2)
        return regions.transpose(1, 2)

    def forward(self, feature_map: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
        """Local logits ``(B, R, K)``: ``classifier`` applied once to every pooled region."""
        return classifier(self.pool(feature_map))

    def extra_repr(self) -> str:
        return f"scales={self.scales}, pooling={self.pooling.value}"
