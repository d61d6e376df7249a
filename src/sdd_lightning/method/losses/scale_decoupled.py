"""The scale-decoupled reduction: a base loss per (sample, region), weighted and averaged.

Regions whose teacher evidence is *complementary* to the global one get ``complementary_weight`` (beta, 2.0 in
the paper); *consistent* regions get ``consistent_weight`` (1.0); the global region 0 is always weighted 1. The
weighted losses are summed and divided by ``R * B``, as in the official code. Pure tensor code: no host
synchronisation, no Python branch on tensor values.

:class:`ScaleDecoupledLoss` holds the settings (checked once, when it is built) and returns the loss with what is
worth logging about it; :func:`sdd_loss` is its functional form, with the same parameters, returning the scalar.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

import torch

from sdd_lightning.method.losses.base import BASE_LOSSES, PerSampleLoss

__all__ = ["Consistency", "SDDLossOutput", "ScaleDecoupledLoss", "base_loss", "complementary_mask", "sdd_loss"]

BaseLossLike = str | PerSampleLoss | Callable[..., torch.Tensor]


class Consistency(StrEnum):
    """Which rule decides whether a region is consistent or complementary."""

    CORRECTNESS = "correctness"
    """The official code (which produced the published numbers): with the teacher only, a region is
    complementary when exactly one of (global prediction correct, region prediction correct) holds."""

    AGREEMENT = "agreement"
    """The paper's text: a region is complementary when the teacher's region prediction differs from
    its global prediction."""

    @classmethod
    def parse(cls, value: str | Consistency) -> Consistency:
        """``"correctness"`` / ``"agreement"`` as the enum, with an error that lists the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(c.value for c in cls)
            raise ValueError(f"consistency must be one of {choices}, got {value!r}") from None


class SDDLossOutput(NamedTuple):
    """The loss and what is worth logging about it."""

    loss: torch.Tensor
    """Scalar: sum of weighted per-(sample, region) losses divided by ``R * B``."""
    complementary_fraction: torch.Tensor
    """Scalar: fraction of the local regions (region 0 excluded) that are complementary; 0 when R == 1."""
    per_region: torch.Tensor
    """``(B, R)``: the base loss of every (sample, region), unweighted and detached (for per-scale logging)."""
    complementary: torch.Tensor
    """``(B, R)`` booleans: which regions were complementary (region 0 never is)."""


def base_loss(base: BaseLossLike, **settings: float) -> Callable[..., torch.Tensor]:
    """A per-sample base loss from a name (``"kd"``, ``"dkd"``, ``"nkd"``) and its settings, or a callable as is.

    A callable given with settings is called with them as keyword arguments.
    """
    if isinstance(base, str):
        try:
            return BASE_LOSSES[base](**settings)
        except KeyError:
            choices = ", ".join(BASE_LOSSES)
            raise ValueError(f"base must be one of {choices} or a callable per-sample loss, got {base!r}") from None
    if not callable(base):
        raise ValueError(f"base must be one of {', '.join(BASE_LOSSES)} or a callable per-sample loss, got {base!r}")
    return functools.partial(base, **settings) if settings else base


def complementary_mask(
    teacher_local: torch.Tensor, target: torch.Tensor, consistency: str | Consistency = Consistency.CORRECTNESS
) -> torch.Tensor:
    """Boolean ``(B, R)``: which regions are complementary under ``consistency``; region 0 never is."""
    rule = Consistency.parse(consistency)
    predictions = teacher_local.argmax(-1)  # (B, R)
    if rule is Consistency.CORRECTNESS:
        correct = predictions == target.view(-1, 1)
        mask = correct ^ correct[:, :1]
    else:
        mask = predictions != predictions[:, :1]
    mask[:, 0] = False
    return mask


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_shapes(student_local: torch.Tensor, teacher_local: torch.Tensor, target: torch.Tensor) -> None:
    if student_local.dim() != 3 or student_local.shape != teacher_local.shape:
        raise ValueError(
            "student_local and teacher_local must both be local logits of shape (B, R, K), got "
            f"{tuple(student_local.shape)} and {tuple(teacher_local.shape)}"
        )
    if target.shape != student_local.shape[:1]:
        raise ValueError(f"target must have shape (B,) = ({student_local.shape[0]},), got {tuple(target.shape)}")


class ScaleDecoupledLoss:
    """The SDD loss between local logits ``(B, R, K)`` (region 0 global), with its settings.

    Args:
        base: the per-sample base loss: a :class:`~sdd_lightning.method.losses.base.PerSampleLoss` such as
            ``KDLoss(temperature=4.0)``, any callable ``f(student (N, K), teacher (N, K), target (N,)) -> (N,)``,
            or the name ``"kd"`` / ``"dkd"`` / ``"nkd"`` (with that loss's default settings).
        complementary_weight: beta, the weight of complementary regions (2.0, as in the official code).
        consistent_weight: the weight of consistent local regions (1.0; 0 and ``complementary_weight`` 0 give the
            ablations "complementary only" and "consistent only").
        consistency: ``"correctness"`` (the official code's rule) or ``"agreement"`` (the paper's text).
    """

    def __init__(
        self,
        base: BaseLossLike = "kd",
        complementary_weight: float = 2.0,
        consistent_weight: float = 1.0,
        consistency: str | Consistency = Consistency.CORRECTNESS,
    ) -> None:
        self.base = base_loss(base)
        self.complementary_weight = _check_weight("complementary_weight", complementary_weight)
        self.consistent_weight = _check_weight("consistent_weight", consistent_weight)
        self.consistency = Consistency.parse(consistency)

    def __call__(self, student_local: torch.Tensor, teacher_local: torch.Tensor, target: torch.Tensor) -> SDDLossOutput:
        """The loss (gradients flow into ``student_local`` only) and its logged parts."""
        _check_shapes(student_local, teacher_local, target)
        batch, regions, classes = student_local.shape
        teacher_local = teacher_local.detach()
        per_region = self.base(
            student_local.reshape(batch * regions, classes),
            teacher_local.reshape(batch * regions, classes),
            target.repeat_interleave(regions),
        ).view(batch, regions)
        complementary = complementary_mask(teacher_local, target, self.consistency)
        weights = torch.where(complementary, self.complementary_weight, self.consistent_weight).to(per_region.dtype)
        weights[:, 0] = 1.0
        loss = (weights * per_region).sum() / (batch * regions)
        fraction = complementary.sum().to(per_region.dtype) / max(batch * (regions - 1), 1)
        return SDDLossOutput(loss, fraction, per_region.detach(), complementary)

    def __repr__(self) -> str:
        return (
            f"ScaleDecoupledLoss(base={self.base!r}, complementary_weight={self.complementary_weight}, "
            f"consistent_weight={self.consistent_weight}, consistency={self.consistency.value!r})"
        )


def sdd_loss(
    student_local: torch.Tensor,
    teacher_local: torch.Tensor,
    target: torch.Tensor,
    *,
    base: BaseLossLike = "kd",
    complementary_weight: float = 2.0,
    consistent_weight: float = 1.0,
    consistency: str | Consistency = "correctness",
    **base_kwargs: float,
) -> torch.Tensor:
    """Scale Decoupled Distillation loss between local logits ``(B, R, K)``, region 0 global; a scalar.

    The functional form of :class:`ScaleDecoupledLoss`, with the same parameters:
    ``ScaleDecoupledLoss(base_loss(base, **base_kwargs), ...)(student_local, teacher_local, target).loss``.

    Args:
        student_local: the student's local logits (gradients flow into these only).
        teacher_local: the teacher's local logits at the same grid positions.
        target: ground-truth class indices ``(B,)``.
        base: ``"kd"``, ``"dkd"``, ``"nkd"``, a :class:`~sdd_lightning.method.losses.base.PerSampleLoss`, or a callable
            ``f(student (N, K), teacher (N, K), target (N,), **kwargs) -> (N,)``.
        complementary_weight: beta, the weight of complementary regions (2.0, as in the official code).
        consistent_weight: the weight of consistent local regions (1.0).
        consistency: ``"correctness"`` (official code) or ``"agreement"`` (the paper's text).
        **base_kwargs: the base loss's settings: ``temperature``, ``alpha``, ``beta``, ``gamma``.

    Returns:
        A scalar tensor. With one region it equals the base loss averaged over the batch.
    """
    loss = ScaleDecoupledLoss(base_loss(base, **base_kwargs), complementary_weight, consistent_weight, consistency)
    return loss(student_local, teacher_local, target).loss
