"""Callbacks that watch a run's health: a stop at the first non-finite loss, a warning for training modules left in eval
mode."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from sdd_lightning.errors import TrainingDiverged

__all__ = ["EvalModeCheck", "FiniteLossCheck", "TrainingDiverged"]

log = logging.getLogger(__name__)


class FiniteLossCheck(L.Callback):
    """Stops the run at the first training step whose loss is not finite.

    Each step's verdict is kept on the loss's device (the first bad step, no host synchronisation); it is read
    at once on the CPU, where reading costs nothing, and on an accelerator at Lightning's logging cadence
    (``trainer.log_every_n_steps``) and at the end of each epoch. On the CPU the run stops before the bad step's
    backward pass. ``LastCheckpoint`` does not save on a failure, so ``last.ckpt`` stays the last good one.
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None
        self._read_every = 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self._read_every = 1 if pl_module.device.type == "cpu" else max(1, trainer.log_every_n_steps)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._first_bad is None:
            self.on_train_start(trainer, pl_module)
        bad = ~torch.isfinite(loss.detach()).all()
        step = torch.full_like(self._first_bad, trainer.global_step)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        if trainer.global_step % self._read_every == 0:
            self._raise_if_diverged(trainer, loss)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first_bad is not None:
            self._raise_if_diverged(trainer, None)

    def _raise_if_diverged(self, trainer: L.Trainer, loss: torch.Tensor | None) -> None:
        first_bad = int(self._first_bad)
        if first_bad < 0:
            return
        lrs = [group.get("initial_lr", group["lr"]) for opt in trainer.optimizers for group in opt.param_groups]
        hint = "lower the learning rate"
        if lrs:
            lr = float(lrs[0])
            hint += f", e.g. optimizer.lr={lr / 10:.3g} (this run: optimizer.lr={lr:.3g})"
        known = loss is not None and first_bad == trainer.global_step
        what = f"is {float(loss.detach().float().flatten()[0])}" if known else "became non-finite"
        raise TrainingDiverged(
            f"the training loss {what} at global step {first_bad} (epoch {trainer.current_epoch}): {hint}, "
            "or check the data"
        )


class EvalModeCheck(L.Callback):
    """Warns when a module that trains (not inside a frozen network such as the teacher) is in eval mode."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = [
            name + "."
            for name, module in pl_module.named_modules()
            if name and (params := list(module.parameters())) and not any(p.requires_grad for p in params)
        ]
        stray = [
            name
            for name, module in pl_module.named_modules()
            if name and not module.training and not any((name + ".").startswith(prefix) for prefix in frozen)
        ]
        if stray:
            shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
            rank_zero_warn(f"{len(stray)} module(s) that train are in eval mode at the start of training: {shown}")
