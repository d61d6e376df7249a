"""LightningModules: plain supervised training and scale-decoupled distillation.

``ClassificationModule`` trains one network with cross-entropy (teachers and baselines).
``DistillationModule`` adds a frozen teacher, the scale-decoupled head and the SDD loss:

    loss = ce_weight * CE(student global logits, y) + kd_weight * warmup(epoch) * L_SDD

Lightning owns the loop; the modules own optimisation, metrics and logging. The loss comes with its named parts
(:class:`LossParts`: the terms summed into it, diagnostics, values per scale) and the training step logs every
one it gets as ``train/<name>``. It does no host reads: the values are summed on the device and logged once per
epoch.

Subclasses extend the step without copying it (``sdd-train`` runs one with
``distill._target_=my_package.MyDistillation``; ``docs/extending.md`` has a worked example):

- ``student_features`` / ``teacher_features``: a pair whose networks do not follow the ``forward_features`` /
  ``get_classifier`` interface;
- ``extra_terms``: loss terms computed from the two final feature maps (e.g. a FitNet-style hint), added to the
  loss and logged under their names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from sdd_lightning.errors import TeacherCacheError, TeacherCheckError
from sdd_lightning.method.heads import Pooling, ScaleDecoupledHead
from sdd_lightning.method.losses import Consistency, KDLoss, PerSampleLoss, ScaleDecoupledLoss
from sdd_lightning.models.fold_bn import fold_batchnorm
from sdd_lightning.models.interface import get_classifier
from sdd_lightning.training.teacher_cache import TeacherViewCache, state_dict_hash

__all__ = ["ClassificationModule", "DistillationModule", "LossParts", "TeacherCheckError", "warmup_factor"]

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


def _loss_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the precision losses are computed in: fp32 for half-precision (autocast) tensors, float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


def _check_number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    """A finite number >= ``minimum``; the ``ValueError`` names the setting."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


class LossParts(NamedTuple):
    """The named parts of a training step's loss, as :meth:`DistillationModule.compute_loss` returns them.

    The step logs every entry: the terms and the diagnostics as ``train/<name>``, the values per scale as
    ``train/<name>_scale<side>``; each is the mean over the epoch's steps (per scale: over its samples and regions).
    ``loss == sum(weights[name] * terms[name] for name in terms)``. The dicts are the step's own: a subclass may
    add to them before they are logged.
    """

    terms: dict[str, torch.Tensor]
    """The scalars summed into the loss, by name, each before its weight and detached (``loss_ce``, ``loss_kd``,
    and the values of :meth:`DistillationModule.extra_terms`)."""
    weights: dict[str, float]
    """The weight each term entered the loss with in this step (for ``loss_kd``, the warm-up included)."""
    diagnostics: dict[str, torch.Tensor]
    """Scalars that are not in the loss but worth watching (``complementary_fraction``)."""
    per_scale: dict[str, torch.Tensor]
    """Per-region values summed over the batch and over the regions of each scale, ``(S,)`` for the head's S
    scales. An entry with ``n < S`` values covers the last ``n`` scales: ``complementary_fraction`` has none for
    scale 1 (the global region is never complementary)."""


_RESERVED_NAMES = frozenset({"loss", "acc1", "teacher_cache_hit_rate"})
"""Names the step logs under ``train/`` of its own: an extra term may not take them."""


class _EpochSums:
    """Per-step values summed on their device and averaged once per epoch: no host read in the step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor | float] = {}

    def add(self, name: str, value: torch.Tensor, count: torch.Tensor | float = 1.0) -> None:
        value = value.detach()
        if name in self.sums:
            self.sums[name] = self.sums[name] + value
            self.counts[name] = self.counts[name] + count
        else:
            self.sums[name], self.counts[name] = value, count

    def means(self) -> dict[str, torch.Tensor]:
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


class ClassificationModule(L.LightningModule):
    """Supervised training of one network with cross-entropy; how teachers and baselines are made.

    Args:
        model: the network (``forward(x) -> logits``).
        num_classes: number of classes, for the metrics.
        optimizer: a factory ``params -> Optimizer`` (Hydra: ``_partial_: true``); default SGD as the
            official CIFAR recipe. It is tried once on a dummy parameter when the module is built, so a bad
            setting (e.g. a negative learning rate) stops the run before training.
        scheduler: a factory ``optimizer -> LRScheduler`` stepped once per epoch, or ``None``.
        channels_last: train in the channels-last memory layout (faster convolutions on GPUs and CPUs
            with bf16).
        compile: ``torch.compile`` the networks' forward passes (worth it for long GPU runs; the first steps
            pay the compilation).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.save_hyperparameters(ignore=["model", "teacher", "student", "optimizer", "scheduler", "loss"])
        self.model = model
        self.num_classes = num_classes
        self.optimizer_factory = optimizer or default_optimizer()
        self.scheduler_factory = scheduler
        _try_factories(self.optimizer_factory, self.scheduler_factory)
        self.channels_last = channels_last
        if compile:
            _compile_forward(model, ("forward", "forward_features"))

        self._train_sums = _EpochSums()
        self.val_loss = MeanMetric()
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        # The best validation epoch so far (top-1, and the top-5 of that epoch); -1 until measured. Buffers, so
        # that they survive checkpoints and resumes.
        self.register_buffer("best_val_acc1", torch.tensor(-1.0))
        self.register_buffer("best_val_acc5", torch.tensor(-1.0))

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

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(self._prepare(x))
        loss = F.cross_entropy(_loss_precision(logits), y)
        self._accumulate_train(loss, logits, y)
        return loss

    def _accumulate_train(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self._train_sums.add("train/loss", loss)
        self._train_sums.add("train/acc1", (logits.argmax(-1) == y).sum(), y.numel())

    def on_train_epoch_start(self) -> None:
        self._train_sums.reset()

    def on_train_epoch_end(self) -> None:
        # one host read of the epoch's sums, not one per step
        self.log_dict(self._train_sums.means(), sync_dist=True)

    # -- validation and test ---------------------------------------------------------------------
    def evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for validation and test: the network's own output."""
        return self(self._prepare(x))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._log_val(self.evaluation_logits(x), y)

    def _log_val(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.val_loss(F.cross_entropy(_loss_precision(logits), y))
        self.val_acc1(logits, y)
        self.val_acc5(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=False)
        self.log("val/acc1", self.val_acc1, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        acc1, acc5 = self.val_acc1.compute(), self.val_acc5.compute()
        better = acc1 > self.best_val_acc1
        self.best_val_acc1.copy_(torch.where(better, acc1, self.best_val_acc1))
        self.best_val_acc5.copy_(torch.where(better, acc5, self.best_val_acc5))
        self.log_dict({"val/acc1_best": self.best_val_acc1, "val/acc5_best": self.best_val_acc5}, prog_bar=False)

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

    The teacher stays in eval mode (also after Lightning calls ``.train()``), has ``requires_grad=False``, is
    never in the optimiser, and its BatchNorm statistics never change. The defaults are the official SD-KD
    recipe (KD with T 4, CE 0.1, KD 0.9, M = {1, 2, 4}); ``scales=(1,)`` gives plain logit distillation with
    the chosen base loss.

    Args:
        student: the network being trained.
        teacher: the trained network; its weights are loaded before it is passed in.
        num_classes: number of classes (teacher and student must agree).
        loss: the per-sample base loss, e.g. ``KDLoss(temperature=4.0)``, ``DKDLoss(...)``, ``NKDLoss(...)`` or
            any callable ``f(student (N, K), teacher (N, K), target (N,)) -> (N,)``; default ``KDLoss()``.
        scales: grid sides of the head, starting with 1 (region 0 is the global region).
        pooling: ``"exact"`` or ``"hierarchical"`` (the official code's pooling).
        ce_weight: weight of the student's cross-entropy.
        kd_weight: weight of the SDD term.
        warmup_epochs: linear warm-up of the SDD term over this many epochs (0: none).
        complementary_weight: weight of complementary regions (beta of the paper, 2.0).
        consistent_weight: weight of consistent local regions (1.0; ablations set 0).
        consistency: ``"correctness"`` (official code) or ``"agreement"`` (paper text).
        optimizer, scheduler, channels_last, compile: as in ``ClassificationModule``.
        fold_teacher_bn: fold the teacher's BatchNorm layers into the convolutions before them at
            construction (exact in eval mode; a faster teacher forward). The teacher's state_dict keys then
            change (BatchNorm entries gone, convolution biases added); the module's own checkpoints save and
            resume as long as it is rebuilt with the same setting.
        teacher_expected_acc1: the teacher's known top-1 (a fraction), e.g. from its model card or the published
            table; before the first training step the teacher is measured on the validation data, and a teacher
            more than ``teacher_acc1_margin`` below this refuses to start (:class:`TeacherCheckError`). ``None``:
            measured and logged, not compared.
        teacher_acc1_margin: how far below ``teacher_expected_acc1`` the measured top-1 may be (a fraction).
        teacher_cache_dir: a folder where the teacher's region logits are kept per training image and view and
            shared between runs (:mod:`sdd_lightning.training.teacher_cache`); ``None``: the teacher runs on every
            batch.
            Needs training batches ``(images, labels, views)`` and the data module's ``view_set()`` (an in-memory
            data module with ``with_views=True``). A batch runs the teacher only on the entries not stored yet.
        teacher_cache_dtype: ``"float32"`` (the live logits, exactly) or ``"float16"`` (half the disk; the
            targets are then the logits rounded to float16, in every step alike).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        loss: PerSampleLoss | Callable[..., torch.Tensor] | None = None,
        scales: Sequence[int] = (1, 2, 4),
        pooling: Pooling | str = "exact",
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        warmup_epochs: float = 0.0,
        complementary_weight: float = 2.0,
        consistent_weight: float = 1.0,
        consistency: Consistency | str = "correctness",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
        fold_teacher_bn: bool = False,
        compile: bool = False,
        teacher_expected_acc1: float | None = None,
        teacher_acc1_margin: float = 0.01,
        teacher_cache_dir: str | None = None,
        teacher_cache_dtype: str = "float32",
    ) -> None:
        super().__init__(student, num_classes, optimizer, scheduler, channels_last, compile=False)
        self.head = ScaleDecoupledHead(scales, pooling)
        self.ce_weight = _check_number("ce_weight", ce_weight)
        self.kd_weight = _check_number("kd_weight", kd_weight)
        if self.ce_weight == 0 and self.kd_weight == 0:
            raise ValueError("ce_weight and kd_weight are both 0: nothing would be trained; give one a weight > 0")
        self.warmup_epochs = _check_number("warmup_epochs", warmup_epochs)
        self.distillation_loss = ScaleDecoupledLoss(
            loss if loss is not None else KDLoss(), complementary_weight, consistent_weight, consistency
        )
        self.hparams["loss"] = _describe(self.distillation_loss.base)
        # region r belongs to scale self.head.scales[region_scale[r]]: per-scale sums without a host read
        region_scale = torch.cat([torch.full((s * s,), i) for i, s in enumerate(self.head.scales)])
        self.register_buffer("region_scale", region_scale, persistent=False)

        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if fold_teacher_bn:
            # In __init__, so that a rebuilt module has the same structure as its checkpoint.
            fold_batchnorm(self.teacher)
        if compile:
            for network in (self.model, self.teacher):
                _compile_forward(network, ("forward_features",))
        if teacher_expected_acc1 is not None:
            teacher_expected_acc1 = _check_number("teacher_expected_acc1", teacher_expected_acc1)
        self.teacher_expected_acc1 = teacher_expected_acc1
        self.teacher_acc1_margin = _check_number("teacher_acc1_margin", teacher_acc1_margin)
        # -1 until measured (before the first training step); buffers, so that they survive checkpoints and resumes.
        self.register_buffer("teacher_acc1", torch.tensor(-1.0))
        self.register_buffer("teacher_local_acc1", torch.full((len(self.head.scales),), -1.0))
        self._val_sums = _EpochSums()
        self.teacher_cache_dir = None if teacher_cache_dir is None else str(teacher_cache_dir)
        self.teacher_cache_dtype = teacher_cache_dtype
        self._teacher_cache: TeacherViewCache | None = None
        self._view_set: Any = None

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

    @torch.no_grad()
    def _teacher_outputs(self, x: torch.Tensor, views: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The teacher's final feature map and local logits of a training batch.

        With the view cache (``teacher_cache_dir``) the local logits are read from it and there is no map
        (``None``): the teacher runs, if at all, on the batch's missing entries only.
        """
        if self.teacher_cache_dir is not None:
            return None, self.cached_teacher_local(x, views)
        feature_map, classifier = self.teacher_features(x)
        return feature_map, self.head.logits(feature_map, classifier)[1]

    # -- the loss --------------------------------------------------------------------------------
    def distillation_weight(self) -> float:
        """``kd_weight`` times the warm-up factor of the current epoch."""
        return self.kd_weight * warmup_factor(self.current_epoch + 1, self.warmup_epochs)

    def compute_loss(
        self, student_global: torch.Tensor, student_local: torch.Tensor, teacher_local: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, LossParts]:
        """The loss from the logits and its named parts (at least fp32, whatever the autocast; float64 stays float64).

        The cross-entropy uses the student's global logits (its ordinary output); the SDD term the local logits.
        The parts (:class:`LossParts`): the terms ``loss_ce`` and ``loss_kd`` (the SDD term) with their weights,
        the diagnostic ``complementary_fraction``, and per scale ``loss_kd`` and ``complementary_fraction``.
        """
        ce = F.cross_entropy(_loss_precision(student_global), y)
        sdd = self.distillation_loss(_loss_precision(student_local), _loss_precision(teacher_local), y)
        kd_weight = self.distillation_weight()
        loss = self.ce_weight * ce + kd_weight * sdd.loss
        complementary = self._per_scale(sdd.complementary.sum(0).to(sdd.per_region.dtype))
        parts = LossParts(
            terms={"loss_ce": ce.detach(), "loss_kd": sdd.loss.detach()},
            weights={"loss_ce": self.ce_weight, "loss_kd": kd_weight},
            diagnostics={"complementary_fraction": sdd.complementary_fraction},
            per_scale={"loss_kd": self._per_scale(sdd.per_region.sum(0)), "complementary_fraction": complementary[1:]},
        )
        return loss, parts

    def extra_terms(
        self, student_map: torch.Tensor, teacher_map: torch.Tensor | None, batch: tuple[torch.Tensor, ...]
    ) -> dict[str, torch.Tensor]:
        """Loss terms computed from the final feature maps; none by default. Override it to add some.

        Args:
            student_map: the student's final feature map ``(B, C_s, h, w)`` (from ``student_features``), with its
                gradient: what a term does to it reaches the student.
            teacher_map: the teacher's final feature map ``(B, C_t, h', w')`` (from ``teacher_features``), computed
                without gradients; ``None`` when the teacher's logits come from the view cache
                (``teacher_cache_dir``), where the teacher does not run on the batch.
            batch: the training batch as the data loader gave it: ``(images, labels)``, or
                ``(images, labels, views)`` with the cache.

        Returns:
            Scalar tensors by name, each added to the loss as it is (apply its weight here) and logged as
            ``train/<name>``; e.g. ``{"loss_hint": weight * mse}``. A name may not repeat one of
            :meth:`compute_loss`'s parts, nor ``loss`` or ``acc1``.
        """
        return {}

    def _add_extra_terms(self, loss: torch.Tensor, parts: LossParts, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """``loss`` plus the terms of :meth:`extra_terms`, which join ``parts.terms`` with weight 1."""
        for name, value in extra.items():
            taken = _RESERVED_NAMES | set(parts.terms) | set(parts.diagnostics)
            if name in taken:
                raise ValueError(
                    f"{type(self).__name__}.extra_terms: the term {name!r} takes the name of a logged value; "
                    f"give it another (taken: {', '.join(sorted(taken))})"
                )
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{type(self).__name__}.extra_terms: {name!r} must be a scalar tensor, got {shape}")
            loss = loss + value
            parts.terms[name] = value.detach()
            parts.weights[name] = 1.0
        return loss

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y, *views = batch
        x = self._prepare(x)
        teacher_map, teacher_local = self._teacher_outputs(x, views[0] if views else None)
        student_map, classifier = self.student_features(x)
        student_global, student_local = self.head.logits(student_map, classifier)
        loss, parts = self.compute_loss(student_global, student_local, teacher_local, y)
        loss = self._add_extra_terms(loss, parts, self.extra_terms(student_map, teacher_map, batch))
        self._accumulate_train(loss, student_global, y)
        self._accumulate_parts(parts, y.numel())
        return loss

    def _accumulate_parts(self, parts: LossParts, samples: int) -> None:
        """Every part into the epoch's sums: terms and diagnostics per step, the per-scale values per sample."""
        for name, value in (parts.terms | parts.diagnostics).items():
            self._train_sums.add(f"train/{name}", value)
        for name, value in parts.per_scale.items():
            self._train_sums.add(f"per_scale/{name}", value, samples)

    # -- the teacher view cache ---------------------------------------------------------------------
    @torch.no_grad()
    def cached_teacher_local(self, x: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """The teacher's local logits ``(B, R, K)`` (float32) of a batch, read from the cache where stored.

        The missing entries are computed in one teacher pass over those images alone (at least two of them: a
        batch of one may round differently) and written to the cache. Reads the views on the host: one
        synchronisation per step, which the disk access needs anyway.
        """
        if views is None:
            raise TeacherCacheError(
                "teacher.cache_dir: the training batches carry no views (index, crop offset, flip); the data module "
                "must be an in-memory one (CIFAR-100, the synthetic set) built with with_views=true"
            )
        cache = self._open_teacher_cache(x)
        ids = self._view_set.flat_ids(views.cpu()).numpy()
        found, stored = cache.lookup(ids)
        local = torch.empty((len(ids), *cache.logits.shape[1:]), dtype=torch.float32)
        local[torch.from_numpy(found)] = torch.from_numpy(stored)
        missing = np.flatnonzero(~found)
        if len(missing):
            rows = torch.from_numpy(missing).to(x.device)
            _, computed = self.teacher_logits(x.index_select(0, rows if len(missing) > 1 else rows.repeat(2)))
            computed = computed[: len(missing)].float().cpu().numpy().astype(cache.logits.dtype)
            cache.store(ids[missing], computed)
            local[torch.from_numpy(missing)] = torch.from_numpy(computed.astype(np.float32))
        self._train_sums.add("train/teacher_cache_hit_rate", torch.tensor(found.mean(), device=x.device))
        return local.to(x.device)

    def _open_teacher_cache(self, x: torch.Tensor) -> TeacherViewCache:
        """The cache of this teacher, scale set, data set and way of computing, opened at the first training step.

        Opened then rather than when built, so that the teacher's weights are final (BatchNorm folded, a resumed
        checkpoint loaded) when they are hashed.
        """
        if self._teacher_cache is None:
            view_set = getattr(getattr(self._trainer, "datamodule", None), "view_set", None)
            if view_set is None:
                raise TeacherCacheError(
                    "teacher.cache_dir needs the data module's view_set() (an in-memory data module with "
                    "with_views=true, passed to Trainer.fit as datamodule=)"
                )
            self._view_set = view_set()
            device = x.device.type
            autocast = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
            key = {
                "teacher": state_dict_hash(self.teacher),
                "scales": list(self.head.scales),
                "pooling": self.head.pooling.value,
                "data": self._view_set.fingerprint,
                "compute": {
                    "device": device,
                    "autocast": autocast,
                    "channels_last": self.channels_last,
                    "compile": bool(self.hparams.get("compile")),
                },
            }
            self._teacher_cache = TeacherViewCache(
                self.teacher_cache_dir,
                key,
                entries=self._view_set.num_images * self._view_set.views_per_image,
                regions=self.head.num_regions,
                num_classes=self.num_classes,
                dtype=self.teacher_cache_dtype,
            )
        return self._teacher_cache

    def on_train_epoch_end(self) -> None:
        means = self._train_sums.means()
        scales = self.head.scales
        for key in [key for key in means if key.startswith("per_scale/")]:
            name, values = key.removeprefix("per_scale/"), means.pop(key)  # (n,): the last n scales
            for side, value in zip(scales[len(scales) - len(values) :], values, strict=True):
                means[f"train/{name}_scale{side}"] = value / (side * side)
        self.log_dict(means, sync_dist=True)

    # -- the teacher, measured once before the first training step -------------------------------
    def on_train_start(self) -> None:
        loaders = self.trainer.val_dataloaders
        if bool(self.teacher_acc1 >= 0) or not loaders:  # measured already (a resumed run), or nothing to measure on
            return
        self.measure_teacher(loaders if isinstance(loaders, list | tuple) else [loaders])
        self.check_teacher()

    @torch.no_grad()
    def measure_teacher(self, loaders: Sequence[Iterable]) -> None:
        """The teacher's top-1 and per-scale local top-1 on ``loaders``, into ``teacher_acc1`` / ``teacher_local_acc1``.

        Under DDP each process sees its shard of the validation data; the counts are summed over processes.
        """
        correct = torch.zeros(1 + len(self.head.scales), device=self.device, dtype=torch.float64)
        total = torch.zeros_like(correct)
        for loader in loaders:
            for batch in loader:
                x, y = self.trainer.strategy.batch_to_device(batch) if self._trainer else batch
                global_logits, local = self.teacher_logits(self._prepare(x))
                correct[0] += (global_logits.argmax(-1) == y).sum()
                total[0] += y.numel()
                correct[1:] += self._per_scale((local.argmax(-1) == y[:, None]).sum(0).to(correct.dtype))
                total[1:] += y.numel() * self._regions_per_scale.to(correct.dtype)
        if self._trainer is not None:
            correct, total = (
                self.trainer.strategy.reduce(correct, reduce_op="sum"),
                self.trainer.strategy.reduce(total, reduce_op="sum"),
            )
        accuracy = (correct / total.clamp(min=1)).float()
        self.teacher_acc1.fill_(accuracy[0])
        self.teacher_local_acc1.copy_(accuracy[1:])

    def check_teacher(self) -> None:
        """Refuses a teacher that scores more than ``teacher_acc1_margin`` below ``teacher_expected_acc1``."""
        if self.teacher_expected_acc1 is None:
            return
        measured = float(self.teacher_acc1)
        if measured < self.teacher_expected_acc1 - self.teacher_acc1_margin:
            # not kept: a rerun (e.g. resuming in the same folder) measures and checks the teacher again
            self.teacher_acc1.fill_(-1.0)
            self.teacher_local_acc1.fill_(-1.0)
            raise TeacherCheckError(
                f"the teacher scores {100 * measured:.2f}% top-1 on the validation data before training, but "
                f"{100 * self.teacher_expected_acc1:.2f}% is expected of it (allowed margin "
                f"{100 * self.teacher_acc1_margin:.2f} points): check teacher.checkpoint and teacher.arch, and that "
                "the data is the one it was trained on. If you mean to distil from it anyway: teacher.check=false"
            )

    @property
    def _regions_per_scale(self) -> torch.Tensor:
        return torch.tensor([s * s for s in self.head.scales], device=self.region_scale.device)

    def _per_scale(self, per_region: torch.Tensor) -> torch.Tensor:
        """``(R,)`` -> ``(S,)``: sums over the regions of each scale."""
        return per_region.new_zeros(len(self.head.scales)).index_add(0, self.region_scale, per_region)

    # -- validation: the student's global and local predictions ----------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        feature_map, classifier = self.student_features(self._prepare(x))
        global_logits, local = self.head.logits(feature_map, classifier)
        self._log_val(global_logits, y)
        correct = self._per_scale((local.argmax(-1) == y[:, None]).sum(0).to(torch.float32))
        self._val_sums.add("val/local_acc1", correct, y.numel() * self._regions_per_scale)

    def evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        feature_map, classifier = self.student_features(self._prepare(x))
        return self.head.logits(feature_map, classifier)[0]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking:
            return
        metrics = {}
        if "val/local_acc1" in self._val_sums.sums:
            local = self._val_sums.means()["val/local_acc1"]
            metrics |= {f"val/local_acc1_scale{side}": local[i] for i, side in enumerate(self.head.scales)}
        if bool(self.teacher_acc1 >= 0):
            metrics["teacher/acc1"] = self.teacher_acc1
            metrics |= {
                f"teacher/local_acc1_scale{side}": self.teacher_local_acc1[i] for i, side in enumerate(self.head.scales)
            }
        self.log_dict(metrics, sync_dist=True)


def _describe(loss: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """A loss as plain values (checkpoints stay loadable with ``weights_only=True``)."""
    settings = loss.settings() if isinstance(loss, PerSampleLoss) else {}
    name = getattr(loss, "__qualname__", None) or type(loss).__qualname__
    return {"name": name, **settings}


def _try_factories(optimizer: OptimizerFactory, scheduler: SchedulerFactory | None) -> None:
    """Builds the optimiser (and scheduler) once on a dummy parameter, so that a bad setting fails now."""
    try:
        trial = optimizer([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise ValueError(f"optimizer: {error}") from None
    if scheduler is not None:
        try:
            schedule = scheduler(trial)
            trial.step()  # no gradients: changes nothing, but lets the schedule take its first step in order
            schedule.step()
        except (ValueError, TypeError, ArithmeticError) as error:
            raise ValueError(f"scheduler: {type(error).__name__}: {error}") from None


def _compile_forward(network: nn.Module, methods: Sequence[str]) -> None:
    """``torch.compile`` the given methods of ``network`` in place (its state_dict keys do not change)."""
    for name in methods:
        if hasattr(network, name):
            setattr(network, name, torch.compile(getattr(network, name)))
