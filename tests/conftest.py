"""Shared test helpers: small networks that follow the features/classifier interface."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from torch import nn

torch.set_num_threads(min(2, os.cpu_count() or 1))


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    For modules of many small tensor operations, or float64 convolutions on small batches: on a busy machine a
    second thread costs more waiting than it gives.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_net():
    """Factory for ``SmallNet`` instances."""
    return SmallNet


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    """A one-epoch CPU ``Trainer`` that writes no logs, checkpoints, progress bar or summary; ``kwargs`` override."""
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
