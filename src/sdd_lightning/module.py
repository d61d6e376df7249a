"""LightningModules: plain supervised training and scale-decoupled distillation.

``ClassificationModule`` trains one network with cross-entropy (teachers and baselines).
``DistillationModule`` adds a frozen teacher, the scale-decoupled head and the SDD loss:

    loss = ce_weight * CE(student global logits, y) + kd_weight * warmup(epoch) * L_SDD

Lightning owns the loop; the modules own optimisation, metrics (torchmetrics) and logging. A new
teacher-student pair whose networks do not follow the ``forward_features`` / ``get_classifier``
interface is brought in by overriding ``student_features`` and ``teacher_features``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from sdd_lightning.heads import Pooling, ScaleDecoupledHead
from sdd_lightning.losses import BaseLoss, Consistency, resolve_base_loss, scale_decoupled_loss
from sdd_lightning.models.fold_bn import fold_batchnorm
from sdd_lightning.models.interface import get_classifier

__all__ = ["ClassificationModule", "DistillationModule", "warmup_factor"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def default_optimizer() -> OptimizerFactory:
    """The official CIFAR-100 solver: SGD, LR 0.05, momentum 0.9, weight decay 5e-4."""
    return partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """The official linear warm-up of the distillation term: ``min(epoch / warmup_epochs, 1)``.

    ``epoch`` counts from 1 as in the official trainer (Lightning's ``current_epoch + 1``), so the
    first epoch of a 20-epoch warm-up uses 1/20. ``warmup_epochs <= 0`` means no warm-up.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


class ClassificationModule(L.LightningModule):
    """Supervised training of one network with cross-entropy; how teachers and baselines are made.

    Args:
        model: the network (``forward(x) -> logits``).
        num_classes: number of classes, for the metrics.
        optimizer: a factory ``params -> Optimizer`` (Hydra: ``_partial_: true``); default SGD as the
            official CIFAR recipe.
        scheduler: a factory ``optimizer -> LRScheduler`` stepped once per epoch, or ``None``.
        channels_last: train in the channels-last memory layout (faster convolutions on GPUs and CPUs
            with bf16).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "teacher", "student", "optimizer", "scheduler"])
        self.model = model
        self.num_classes = num_classes
        self.optimizer_factory = optimizer or default_optimizer()
        self.scheduler_factory = scheduler
        self.channels_last = channels_last

        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.val_acc1_best = MaxMetric()
        self.val_acc1_best.persistent(True)
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    # -- the network ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        # Lightning keeps the modes it finds; a network handed over in eval mode would otherwise train with
        # frozen BatchNorm statistics. (DistillationModule.train keeps the teacher in eval mode.)
        self.train()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """What the optimiser updates: the network's parameters and nothing else."""
        return self.model.parameters()

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(self._prepare(x))
        loss = F.cross_entropy(logits.float(), y)
        self._log_train(loss, logits, y, {})
        return loss

    def _log_train(
        self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, parts: dict[str, torch.Tensor]
    ) -> None:
        self.train_acc1(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)

    def evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for validation and test: the network's own output."""
        return self(self._prepare(x))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._log_val(self.evaluation_logits(x), y)

    def _log_val(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.val_loss(F.cross_entropy(logits.float(), y))
        self.val_acc1(logits, y)
        self.val_acc5(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=False)
        self.log("val/acc1", self.val_acc1, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc1_best(self.val_acc1.compute())
        self.log("val/acc1_best", self.val_acc1_best.compute(), prog_bar=True, sync_dist=False)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.evaluation_logits(x)
        self.test_acc1(logits, y)
        self.test_acc5(logits, y)
        self.log("test/acc1", self.test_acc1, on_epoch=True)
        self.log("test/acc5", self.test_acc5, on_epoch=True)

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class DistillationModule(ClassificationModule):
    """Scale Decoupled Distillation of a frozen teacher into a student.

    The teacher stays in eval mode (also after Lightning calls ``.train()``), has
    ``requires_grad=False``, is never in the optimiser, and its BatchNorm statistics never change.
    ``scales=(1,)`` gives plain logit distillation with the chosen base loss.

    Args:
        student: the network being trained.
        teacher: the trained network; its weights are loaded before it is passed in.
        num_classes: number of classes (teacher and student must agree).
        scales: grid sides of the head; must start with 1 (region 0 is the global region CE uses).
        pooling: ``"exact"`` or ``"hierarchical"`` (the official code's pooling).
        base: ``"kd"``, ``"dkd"`` or ``"nkd"`` (or a callable per-sample loss).
        temperature, alpha, beta, gamma: the base loss's settings (only those it takes are passed).
        ce_weight: weight of the student's cross-entropy.
        kd_weight: weight of the SDD term.
        warmup_epochs: linear warm-up of the SDD term over this many epochs (0: none).
        complementary_weight: weight of complementary regions (beta of the paper, 2.0).
        consistent_weight: weight of consistent local regions (1.0; ablations set 0).
        consistency: ``"correctness"`` (official code) or ``"agreement"`` (paper text).
        optimizer, scheduler, channels_last: as in ``ClassificationModule``.
        fold_teacher_bn: fold the teacher's BatchNorm layers into the convolutions before them at
            construction (exact in eval mode; a faster teacher forward). The teacher's state_dict keys then
            change (BatchNorm entries gone, convolution biases added); the module's own checkpoints save and
            resume as long as it is rebuilt with the same setting.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        scales: Sequence[int] = (1, 2, 4),
        pooling: Pooling | str = "exact",
        base: BaseLoss | str | Callable[..., torch.Tensor] = "kd",
        temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        gamma: float = 1.5,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        warmup_epochs: float = 0.0,
        complementary_weight: float = 2.0,
        consistent_weight: float = 1.0,
        consistency: Consistency | str = "correctness",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
        fold_teacher_bn: bool = False,
    ) -> None:
        super().__init__(student, num_classes, optimizer, scheduler, channels_last)
        self.head = ScaleDecoupledHead(scales, pooling)
        if self.head.scales[0] != 1:
            raise ValueError(
                f"scales must start with 1, got {self.head.scales}: region 0 is the global region whose logits "
                "the cross-entropy loss uses (e.g. distill.scales=[1,2,4])"
            )
        self.consistency = Consistency(consistency)
        self.base_loss = resolve_base_loss(base)
        self.base_kwargs = _base_kwargs(base, temperature=temperature, alpha=alpha, beta=beta, gamma=gamma)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.warmup_epochs = warmup_epochs
        self.complementary_weight = complementary_weight
        self.consistent_weight = consistent_weight

        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if fold_teacher_bn:
            # In __init__, so that a rebuilt module has the same structure as its checkpoint.
            fold_batchnorm(self.teacher)
        self.teacher_val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        # -1 until measured; a buffer so that it survives checkpoints and resumes.
        self.register_buffer("teacher_acc1", torch.tensor(-1.0))

    @property
    def student(self) -> nn.Module:
        """The network being trained (stored as ``model``: its checkpoint keys start with ``model.``)."""
        return self.model

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()
        return self

    # -- the hooks a new teacher-student pair overrides -------------------------------------------
    def student_features(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        """The student's final feature map ``(B, C, h, w)`` and its linear classifier."""
        return self.model.forward_features(x), get_classifier(self.model)

    def teacher_features(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        """The teacher's final feature map ``(B, C, h, w)`` and its linear classifier."""
        return self.teacher.forward_features(x), get_classifier(self.teacher)

    # -- global and local logits -------------------------------------------------------------------
    def student_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's global logits ``(B, K)`` (its ordinary output) and local logits ``(B, R, K)``."""
        feature_map, classifier = self.student_features(x)
        return self.head.logits(feature_map, classifier)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's global and local logits, without gradients."""
        feature_map, classifier = self.teacher_features(x)
        return self.head.logits(feature_map, classifier)

    def distillation_weight(self) -> float:
        """``kd_weight`` times the warm-up factor of the current epoch."""
        return self.kd_weight * warmup_factor(self.current_epoch + 1, self.warmup_epochs)

    def compute_loss(
        self, student_global: torch.Tensor, student_local: torch.Tensor, teacher_local: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts (fp32, whatever the autocast).

        The cross-entropy uses the student's global logits (its ordinary output); the SDD term the local logits.
        """
        ce = F.cross_entropy(student_global.float(), y)
        sdd = scale_decoupled_loss(
            student_local.float(),
            teacher_local.float(),
            y,
            base=self.base_loss,
            complementary_weight=self.complementary_weight,
            consistent_weight=self.consistent_weight,
            consistency=self.consistency,
            **self.base_kwargs,
        )
        loss = self.ce_weight * ce + self.distillation_weight() * sdd.loss
        parts = {
            "loss_ce": ce.detach(),
            "loss_kd": sdd.loss.detach(),
            "complementary_fraction": sdd.complementary_fraction,
        }
        return loss, parts

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = self._prepare(x)
        _, teacher_local = self.teacher_logits(x)
        student_global, student_local = self.student_logits(x)
        loss, parts = self.compute_loss(student_global, student_local, teacher_local, y)
        self._log_train(loss, student_global, y, parts)
        return loss

    # -- validation: the student as usual, and the teacher once -----------------------------------
    def on_validation_epoch_start(self) -> None:
        # Decided once per epoch: one host read of the buffer per epoch, none per step.
        self._measure_teacher_now = not self.trainer.sanity_checking and bool(self.teacher_acc1 < 0)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        x = self._prepare(x)
        if getattr(self, "_measure_teacher_now", False):
            self.teacher_val_acc1(self.teacher_logits(x)[0], y)
        self._log_val(self.evaluation_logits(x), y)

    def evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        feature_map, classifier = self.student_features(self._prepare(x))
        return self.head.logits(feature_map, classifier)[0]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking:
            return
        if self._measure_teacher_now:
            self.teacher_acc1.fill_(self.teacher_val_acc1.compute())
            self.teacher_val_acc1.reset()
            self._measure_teacher_now = False
        self.log("teacher/acc1", self.teacher_acc1)


def _base_kwargs(base: BaseLoss | str | Callable[..., torch.Tensor], **settings: float) -> dict[str, float]:
    """The settings that the chosen base loss takes (KD: temperature; DKD: + alpha, beta; NKD: + gamma)."""
    taken = {
        BaseLoss.KD: ("temperature",),
        BaseLoss.DKD: ("temperature", "alpha", "beta"),
        BaseLoss.NKD: ("temperature", "gamma"),
    }
    if callable(base) and not isinstance(base, BaseLoss):
        return {}  # a custom loss brings its own settings (e.g. through functools.partial)
    return {name: settings[name] for name in taken[BaseLoss(base)]}
