"""The scale-decoupled reduction: a base loss per (sample, region), weighted and averaged.

Regions whose teacher evidence is *complementary* to the global one get ``complementary_weight``
(beta, 2.0 in the paper); *consistent* regions get ``consistent_weight`` (1.0); the global region 0 is
always weighted 1. The weighted losses are summed and divided by ``R * B``, as in the official code.
Pure tensor code: no host synchronisation, no Python branch on tensor values.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

import torch

from sdd_lightning.losses.base import dkd_loss, kd_loss, nkd_loss

__all__ = [
    "BaseLoss",
    "Consistency",
    "SDDLossOutput",
    "complementary_mask",
    "resolve_base_loss",
    "scale_decoupled_loss",
    "sdd_loss",
]

PerSampleLoss = Callable[..., torch.Tensor]


class BaseLoss(StrEnum):
    """The built-in per-sample logit losses."""

    KD = "kd"
    DKD = "dkd"
    NKD = "nkd"


_BASE_LOSSES: dict[BaseLoss, PerSampleLoss] = {BaseLoss.KD: kd_loss, BaseLoss.DKD: dkd_loss, BaseLoss.NKD: nkd_loss}


class Consistency(StrEnum):
    """Which rule decides whether a region is consistent or complementary."""

    CORRECTNESS = "correctness"
    """The official code (which produced the published numbers): with the teacher only, a region is
    complementary when exactly one of (global prediction correct, region prediction correct) holds."""

    AGREEMENT = "agreement"
    """The paper's text: a region is complementary when the teacher's region prediction differs from
    its global prediction."""


class SDDLossOutput(NamedTuple):
    """The loss and what is worth logging about it."""

    loss: torch.Tensor
    """Scalar: sum of weighted per-(sample, region) losses divided by ``R * B``."""
    complementary_fraction: torch.Tensor
    """Scalar: fraction of the local regions (region 0 excluded) that are complementary; 0 when R == 1."""


def resolve_base_loss(base: str | BaseLoss | PerSampleLoss) -> PerSampleLoss:
    """Maps ``"kd" | "dkd" | "nkd"`` (or a callable of the same per-sample form) to the function."""
    if callable(base) and not isinstance(base, BaseLoss):
        return base
    try:
        return _BASE_LOSSES[BaseLoss(base)]
    except ValueError:
        choices = ", ".join(b.value for b in BaseLoss)
        raise ValueError(f"base must be one of {choices} or a callable per-sample loss, got {base!r}") from None


def complementary_mask(
    teacher_local: torch.Tensor, target: torch.Tensor, consistency: str | Consistency = Consistency.CORRECTNESS
) -> torch.Tensor:
    """Boolean ``(B, R)``: which regions are complementary under ``consistency``; region 0 never is."""
    try:
        rule = Consistency(consistency)
    except ValueError:
        choices = ", ".join(c.value for c in Consistency)
        raise ValueError(f"consistency must be one of {choices}, got {consistency!r}") from None
    predictions = teacher_local.argmax(-1)  # (B, R)
    global_prediction = predictions[:, :1]
    if rule is Consistency.CORRECTNESS:
        correct = predictions == target.view(-1, 1)
        mask = correct ^ correct[:, :1]
    else:
        mask = predictions != global_prediction
    mask[:, 0] = False
    return mask


def _check_shapes(student_local: torch.Tensor, teacher_local: torch.Tensor, target: torch.Tensor) -> None:
    if student_local.dim() != 3 or student_local.shape != teacher_local.shape:
        raise ValueError(
            "student_local and teacher_local must both be local logits of shape (B, R, K), got "
            f"{tuple(student_local.shape)} and {tuple(teacher_local.shape)}"
        )
    if target.shape != student_local.shape[:1]:
        raise ValueError(f"target must have shape (B,) = ({student_local.shape[0]},), got {tuple(target.shape)}")


def scale_decoupled_loss(
    student_local: torch.Tensor,
    teacher_local: torch.Tensor,
    target: torch.Tensor,
    *,
    base: str | BaseLoss | PerSampleLoss = BaseLoss.KD,
    complementary_weight: float = 2.0,
    consistent_weight: float = 1.0,
    consistency: str | Consistency = Consistency.CORRECTNESS,
    **base_kwargs: float,
) -> SDDLossOutput:
    """SDD loss with its complementary fraction; ``sdd_loss`` is the scalar-only form.

    ``consistent_weight`` weights the consistent local regions (1 in the paper; 0 and
    ``complementary_weight`` 0 give the ablations "complementary only" and "consistent only").
    """
    _check_shapes(student_local, teacher_local, target)
    loss_fn = resolve_base_loss(base)
    batch, regions, classes = student_local.shape
    teacher_local = teacher_local.detach()
    per_region = loss_fn(
        student_local.reshape(batch * regions, classes),
        teacher_local.reshape(batch * regions, classes),
        target.repeat_interleave(regions),
        **base_kwargs,
    ).view(batch, regions)
    complementary = complementary_mask(teacher_local, target, consistency)
    weights = torch.where(complementary, complementary_weight, consistent_weight).to(per_region.dtype)
    weights[:, 0] = 1.0
    loss = (weights * per_region).sum() / (batch * regions)
    local_regions = max(batch * (regions - 1), 1)
    fraction = complementary.sum().to(per_region.dtype) / local_regions
    return SDDLossOutput(loss, fraction)


def sdd_loss(
    student_local: torch.Tensor,
    teacher_local: torch.Tensor,
    target: torch.Tensor,
    *,
    base: str | BaseLoss | PerSampleLoss = "kd",
    complementary_weight: float = 2.0,
    consistency: str | Consistency = "correctness",
    **base_kwargs: float,
) -> torch.Tensor:
    """Scale Decoupled Distillation loss between local logits ``(B, R, K)``, region 0 global.

    Args:
        student_local: the student's local logits (gradients flow into these only).
        teacher_local: the teacher's local logits at the same grid positions.
        target: ground-truth class indices ``(B,)``.
        base: ``"kd"``, ``"dkd"``, ``"nkd"`` or a callable ``f(student (N, K), teacher (N, K), target (N,),
            **kwargs) -> (N,)``.
        complementary_weight: beta, the weight of complementary regions (2.0, as in the official code).
        consistency: ``"correctness"`` (official code) or ``"agreement"`` (the paper's text).
        **base_kwargs: passed to the base loss: ``temperature``, ``alpha``, ``beta``, ``gamma``.

    Returns:
        A scalar tensor. With one region it equals the base loss averaged over the batch.
    """
    return scale_decoupled_loss(
        student_local,
        teacher_local,
        target,
        base=base,
        complementary_weight=complementary_weight,
        consistency=consistency,
        **base_kwargs,
    ).loss
