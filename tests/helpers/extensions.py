"""What a user brings from outside the library: a network without the interface, module subclasses, a base loss.

The tests run them through ``sdd-train`` by name (``student.arch=helpers.extensions.PlainNet``,
``distill._target_=helpers.extensions.PlainPairDistillation``, ``distill._target_=helpers.extensions.FitNetHint``,
``loss=scaled_l1`` with ``tests/conf`` on Hydra's search path), as a user's own package would be.
``FitNetHint`` is the worked example of ``docs/extending.md``, line for line.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sdd_lightning import DistillationModule, get_classifier
from sdd_lightning.method.losses import PerSampleLoss


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


class FitNetHint(DistillationModule):
    """SDD plus a FitNet-style hint: the student's final feature map, mapped onto the teacher's channels by a
    1x1 convolution, is pulled towards the teacher's map (mean squared error, weighted by ``hint_weight``)."""

    def __init__(self, *args, hint_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hint_weight = hint_weight
        # a classifier's in_features is the channel count of the map it pools
        student_channels = get_classifier(self.student).in_features
        teacher_channels = get_classifier(self.teacher).in_features
        self.regressor = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.student.parameters()
        yield from self.regressor.parameters()  # trained with the student, discarded after

    def extra_terms(self, student_map, teacher_map, batch):
        if teacher_map is None:
            raise ValueError("FitNetHint needs the teacher's feature map: run it without teacher.cache_dir")
        hint = F.mse_loss(self.regressor(student_map), teacher_map)
        return {"loss_hint": self.hint_weight * hint}
