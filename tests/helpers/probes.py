"""Callbacks that tests add to an ``sdd-train`` run to see inside it.

A run names one by ``+callbacks.probe._target_=helpers.probes.<Name>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


def _norm_layers(module) -> list[str]:
    return sorted({type(m).__name__ for m in module.modules() if "Norm" in type(m).__name__})


class NormLayerProbe(L.Callback):
    """Writes, at the start of training, which normalisation layer types the student and teacher hold."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = {"student": _norm_layers(pl_module.model)}
        if hasattr(pl_module, "teacher"):
            found["teacher"] = _norm_layers(pl_module.teacher)
        self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}.json").write_text(json.dumps(found))
