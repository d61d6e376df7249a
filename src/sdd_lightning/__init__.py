"""Scale Decoupled Distillation (Wei, Luo, Luo, CVPR 2024) for PyTorch Lightning.

The public API: import these names from ``sdd_lightning`` itself; the modules behind them may move, these names
stay. They are loaded on first use, so ``import sdd_lightning`` stays cheap (no torch until a name is used).

- the method: ``ScaleDecoupledHead``, ``ScaleDecoupledLoss``, ``sdd_loss``, the base losses ``KDLoss``,
  ``DKDLoss``, ``NKDLoss`` (and ``kd_loss``), ``standardize_logits`` (logit standardization),
  ``complementary_mask`` (which regions SDD up-weights);
- training: ``DistillationModule``, ``ClassificationModule``, ``LossParts`` (the named terms of a step;
  docs/extending.md);
- networks: ``build_model``, ``available_models``, ``register_model`` (a decorator), ``load_weights``,
  ``get_classifier``;
- data: ``Cifar100DataModule``, ``ImageNetDataModule``, ``Cub200DataModule``, ``SyntheticDataModule``;
- settings and configs: ``compose_setting``, ``published``, ``build_module``, ``build_datamodule``;
- exported students: ``read_model_card``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ScaleDecoupledHead": "sdd_lightning.method.heads",
    "ScaleDecoupledLoss": "sdd_lightning.method.losses",
    "sdd_loss": "sdd_lightning.method.losses",
    "KDLoss": "sdd_lightning.method.losses",
    "DKDLoss": "sdd_lightning.method.losses",
    "NKDLoss": "sdd_lightning.method.losses",
    "standardize_logits": "sdd_lightning.method.losses",
    "kd_loss": "sdd_lightning.method.losses",
    "complementary_mask": "sdd_lightning.method.losses",
    "DistillationModule": "sdd_lightning.training.module",
    "ClassificationModule": "sdd_lightning.training.module",
    "LossParts": "sdd_lightning.training.module",
    "build_model": "sdd_lightning.models",
    "load_weights": "sdd_lightning.models",
    "get_classifier": "sdd_lightning.models",
    "available_models": "sdd_lightning.models",
    "register_model": "sdd_lightning.models",
    "Cifar100DataModule": "sdd_lightning.data",
    "ImageNetDataModule": "sdd_lightning.data",
    "Cub200DataModule": "sdd_lightning.data",
    "SyntheticDataModule": "sdd_lightning.data",
    "compose_setting": "sdd_lightning.catalog",
    "published": "sdd_lightning.catalog",
    "build_module": "sdd_lightning.builders",
    "build_datamodule": "sdd_lightning.builders",
    "read_model_card": "sdd_lightning.reporting.model_card",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sdd_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
