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
    """The official SDD code's spatial pyramid: pool the map to 4x4 first, then pool that 4x4 grid to
    each smaller scale (also when the scales are {1, 2}). Scales must divide 4.

    Identical to ``EXACT`` when the map side is divisible by 4 (every CIFAR network); on e.g. a 7x7 or 14x14
    map the adaptive 4x4 bins overlap, and even the "global" region 0 is not the plain global average. As in
    the official code, the cross-entropy and the reported accuracy then use the network's true global logits
    (:meth:`ScaleDecoupledHead.logits`), and ``scales=(1,)`` is the plain global head.
    """


# The grid the official spatial pyramid pools to before the smaller scales.
_OFFICIAL_BASE_GRID = 4


def validate_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Checks a scale set (positive, distinct grid sides, the global 1 first) and returns it as a tuple.

    Raises a ``ValueError`` that says what to fix. This is the one place the rules live.
    """
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
    if scales[0] != 1:
        raise ValueError(
            f"scales must start with 1, got {scales!r}: region 0 is the global region, which every other region "
            "is compared with (e.g. scales=(1, 2, 4))"
        )
    return scales


def num_regions(scales: Sequence[int]) -> int:
    """Number of regions ``R = sum(m * m)`` a scale set produces."""
    return sum(s * s for s in validate_scales(scales))


class ScaleDecoupledHead(nn.Module):
    """Turns a feature map and a linear classifier into local logits ``(B, R, K)``.

    Pooling and the classifier are both linear, so the result equals pooling the logit map ``W f``.
    The head pools first (R region vectors are far fewer than the h*w map positions): every scale is
    pooled, the region vectors are concatenated and the classifier runs once on all of them. Region 0
    is the global region (scales start with 1); with exact pooling its logits are the network's output, which
    the cross-entropy loss uses (:meth:`logits`): the classifier never runs twice on the same features.

    Args:
        scales: grid sides starting with 1, e.g. ``(1, 2, 4)``; ``(1,)`` is the plain global head.
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
        if self.pooling is Pooling.HIERARCHICAL and any(_OFFICIAL_BASE_GRID % s for s in self.scales):
            raise ValueError(
                f"pooling=hierarchical follows the official code, which pools to {_OFFICIAL_BASE_GRID}x"
                f"{_OFFICIAL_BASE_GRID} first and supports only scales that divide {_OFFICIAL_BASE_GRID} "
                f"(1, 2, 4); got scales={self.scales}. Use pooling=exact for other scales."
            )

    @property
    def num_regions(self) -> int:
        """``R``, the number of regions per image."""
        return sum(s * s for s in self.scales)

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Region vectors ``(B, R, C)`` of a feature map ``(B, C, h, w)``."""
        if feature_map.dim() != 4:
            raise ValueError(f"expected a feature map of shape (B, C, h, w), got shape {tuple(feature_map.shape)}")
        if self.pooling is Pooling.HIERARCHICAL and self.scales != (1,):
            base = F.adaptive_avg_pool2d(feature_map, _OFFICIAL_BASE_GRID)
            grids = [F.adaptive_avg_pool2d(base, s) for s in self.scales]
        else:
            grids = [F.adaptive_avg_pool2d(feature_map, s) for s in self.scales]
        # (B, C, s, s) -> (B, C, s*s), row-major within a scale; concatenated scale by scale.
        regions = torch.cat([g.flatten(2) for g in grids], dim=2)
        return regions.transpose(1, 2)

    @property
    def region_zero_is_global(self) -> bool:
        """Whether region 0 is the plain global average (always with exact pooling; with hierarchical pooling
        only for ``scales=(1,)``)."""
        return self.pooling is Pooling.EXACT or self.scales == (1,)

    def forward(self, feature_map: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
        """Local logits ``(B, R, K)``: ``classifier`` applied once to every pooled region."""
        return classifier(self.pool(feature_map))

    def logits(self, feature_map: torch.Tensor, classifier: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's global logits ``(B, K)`` and its local logits ``(B, R, K)``, with one classifier call.

        The global logits are the classifier on the global average of the map: what the network outputs, and
        what the cross-entropy and the accuracy use. With exact pooling they are region 0; with hierarchical
        pooling region 0 may differ (see :class:`Pooling`), so the global average is pooled as one more vector.
        """
        regions = self.pool(feature_map)
        if self.region_zero_is_global:
            local = classifier(regions)
            return local[:, 0], local
        global_vector = feature_map.mean((2, 3)).unsqueeze(1)
        out = classifier(torch.cat([global_vector, regions], dim=1))
        return out[:, 0], out[:, 1:]

    def extra_repr(self) -> str:
        return f"scales={self.scales}, pooling={self.pooling.value}"
