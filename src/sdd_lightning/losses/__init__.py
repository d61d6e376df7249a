"""Logit distillation losses: per-sample base losses and the scale-decoupled reduction."""

from sdd_lightning.losses.base import dkd_loss, kd_loss, nkd_loss
from sdd_lightning.losses.scale_decoupled import (
    BaseLoss,
    Consistency,
    SDDLossOutput,
    complementary_mask,
    resolve_base_loss,
    scale_decoupled_loss,
    sdd_loss,
)

__all__ = [
    "BaseLoss",
    "Consistency",
    "SDDLossOutput",
    "complementary_mask",
    "dkd_loss",
    "kd_loss",
    "nkd_loss",
    "resolve_base_loss",
    "scale_decoupled_loss",
    "sdd_loss",
]
