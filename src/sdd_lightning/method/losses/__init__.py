"""Logit distillation losses: per-sample base losses and the scale-decoupled reduction."""

from sdd_lightning.method.losses.base import (
    BASE_LOSSES,
    DKDLoss,
    KDLoss,
    NKDLoss,
    PerSampleLoss,
    dkd_loss,
    kd_loss,
    nkd_loss,
    standardize_logits,
)
from sdd_lightning.method.losses.scale_decoupled import (
    Consistency,
    ScaleDecoupledLoss,
    SDDLossOutput,
    base_loss,
    complementary_mask,
    sdd_loss,
)

__all__ = [
    "BASE_LOSSES",
    "Consistency",
    "DKDLoss",
    "KDLoss",
    "NKDLoss",
    "PerSampleLoss",
    "SDDLossOutput",
    "ScaleDecoupledLoss",
    "base_loss",
    "complementary_mask",
    "dkd_loss",
    "kd_loss",
    "nkd_loss",
    "sdd_loss",
    "standardize_logits",
]
