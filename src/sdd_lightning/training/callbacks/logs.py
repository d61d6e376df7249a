"""The callback that tells the resumable loggers at which step a (resumed) run starts writing."""

from __future__ import annotations

import lightning as L


class LogContinuation(L.Callback):
    """Tells the loggers at which step training (re)starts, once the checkpoint has been restored."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the step Lightning logs with (batches that stepped), as restored from the checkpoint
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            continue_from = getattr(logger, "continue_from", None)
            if continue_from is not None:
                continue_from(step)
