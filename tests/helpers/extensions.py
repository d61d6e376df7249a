"""What a user brings from outside the library: a network without the interface, a module subclass, a base loss.

The tests run them through ``sdd-train`` by name (``student.arch=helpers.extensions.PlainNet``,
``distill._target_=helpers.extensions.PlainPairDistillation``, ``loss=scaled_l1`` with ``tests/conf`` on Hydra's
search path), as a user's own package would be.
"""

from __future__ import annotations

import torch
from torch import nn

from sdd_lightning.method.losses import PerSampleLoss
from sdd_lightning.training.module import DistillationModule


class PlainNet(nn.Module):
    """A network with neither ``forward_features`` nor ``get_classifier``: a trunk and a head of its own names."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).mean((2, 3)))


class PlainPairDistillation(DistillationModule):
    """SDD between two ``PlainNet``: the two hooks tell the head where the map and the classifier are."""

    calls = 0

    def student_features(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        type(self).calls += 1
        return self.model.trunk(x), self.model.head

    def teacher_features(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        return self.teacher.trunk(x), self.teacher.head


class ScaledL1Loss(PerSampleLoss):
    """A base loss the library does not have: ``scale * |student - teacher|_1`` per row."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)

    def settings(self) -> dict[str, float]:
        return {"scale": self.scale}

    def __call__(self, student_logits, teacher_logits, target=None):
        return self.scale * (student_logits - teacher_logits.detach()).abs().sum(-1)
