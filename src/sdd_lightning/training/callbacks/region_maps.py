"""The callback that draws the regions SDD distils on a fixed set of validation images, every few epochs."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from sdd_lightning.training.module import DistillationModule

__all__ = ["RegionMaps"]

log = logging.getLogger(__name__)


class RegionMaps(L.Callback):
    """Every ``every_n_epochs`` epochs, a picture of the regions on a fixed set of validation images.

    The picture (see :func:`sdd_lightning.reporting.region_maps.draw_region_maps`) shows the teacher's global and local
    predictions on the grid of each scale, which regions are complementary, and whether the student's local
    predictions agree with the teacher's. It is logged as an image to W&B and TensorBoard when those loggers are
    on, and otherwise written as ``<run>/region_maps/epoch<NNN>.png``. Only distillation runs with local scales
    are drawn; it needs
    matplotlib (without it, one warning and nothing drawn).

    Args:
        every_n_epochs: how often (also after the last epoch); 0 turns it off.
        num_images: how many validation images (the first ones of the validation data, always the same).
        folder: where the PNGs go when no W&B / TensorBoard logger is on (relative to the run folder).
    """

    def __init__(self, every_n_epochs: int = 10, num_images: int = 4, folder: str = "region_maps") -> None:
        if every_n_epochs < 0 or num_images < 1:
            raise ValueError(f"every_n_epochs must be >= 0 and num_images >= 1, got {every_n_epochs}, {num_images}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.folder = folder
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warned = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs or not isinstance(pl_module, DistillationModule):
            return
        if max(pl_module.head.scales) == 1:  # plain KD/DKD/NKD: no regions to draw
            return
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if not trainer.is_global_zero or (epoch % self.every_n_epochs and not last):
            return
        try:
            from sdd_lightning.reporting.region_maps import draw_region_maps, figure_to_array
        except ImportError:
            if not self._warned:
                log.warning("region maps need matplotlib (pip install matplotlib); none are drawn")
                self._warned = True
            return
        x, y = self._fixed_batch(trainer)
        if x is None:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            x, y = x.to(pl_module.device), y.to(pl_module.device)
            _, teacher_local = pl_module.teacher_logits(pl_module._prepare(x))
            _, student_local = pl_module.student_logits(pl_module._prepare(x))
        pl_module.train(was_training)
        datamodule = trainer.datamodule
        figure = draw_region_maps(
            x,
            y,
            teacher_local.float(),
            student_local.float(),
            pl_module.head.scales,
            class_names=getattr(datamodule, "class_names", None),
            consistency=pl_module.distillation_loss.consistency,
            mean=getattr(datamodule, "mean", None),
            std=getattr(datamodule, "std", None),
            title=f"epoch {epoch}",
        )
        self._log(trainer, figure, figure_to_array, epoch)

    def _fixed_batch(self, trainer: L.Trainer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The first ``num_images`` validation images, read once and kept (on the CPU)."""
        if self._batch is None:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            if loader is None:
                return None, None
            images, labels = [], []
            for x, y in loader:
                images.append(x.cpu())
                labels.append(y.cpu())
                if sum(len(t) for t in labels) >= self.num_images:
                    break
            self._batch = (torch.cat(images)[: self.num_images], torch.cat(labels)[: self.num_images])
        return self._batch

    def _log(self, trainer: L.Trainer, figure, to_array, epoch: int) -> None:
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("region_maps", to_array(figure), trainer.global_step, dataformats="HWC")
                logged = True
            elif isinstance(logger, WandbLogger):
                caption = [f"epoch {epoch}"]
                logger.log_image("region_maps", [to_array(figure)], step=trainer.global_step, caption=caption)
                logged = True
        if not logged:
            folder = Path(trainer.default_root_dir) / self.folder
            folder.mkdir(parents=True, exist_ok=True)
            figure.savefig(folder / f"epoch{epoch:03d}.png")
