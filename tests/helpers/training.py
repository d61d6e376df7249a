"""A small network that follows the features/classifier interface, and the one quiet ``Trainer`` every test uses."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

__all__ = ["SmallNet", "quiet_trainer"]


class SmallNet(nn.Module):
    """A two-conv network with BatchNorm: ``forward_features`` -> map, ``classifier`` -> logits."""

    def __init__(self, num_classes: int = 10, width: int = 8, map_size: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(map_size),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


def quiet_trainer(tmp_path=None, **kwargs) -> L.Trainer:
    """A one-epoch CPU ``Trainer`` that writes no logs, checkpoints, progress bar or summary.

    ``tmp_path``: its root folder (``None``, Lightning's default, for a trainer that is only attached to a module
    and never fits). ``kwargs`` override any ``lightning.Trainer`` argument: ``max_epochs``, ``max_steps``,
    ``precision``, ``callbacks``, ``logger``, ``enable_checkpointing``, ``devices``, ``strategy``, ...
    """
    defaults = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**(defaults | kwargs))
