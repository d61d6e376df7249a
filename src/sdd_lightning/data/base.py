"""What every data module of the project shares: the loader settings, the splits and how loaders are built."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from sdd_lightning.data.layout import DatasetLocation
from sdd_lightning.data.registry import register_datamodule
from sdd_lightning.data.resumable import EpochSampler, ResumableDataLoader, SeededSamples
from sdd_lightning.data.seeding import derive_seed
from sdd_lightning.data.splits import check_val_split, stratified_holdout

__all__ = ["ClassificationDataModule", "ImageFileDataModule"]

_WORKER_STREAM = 5  # purpose key of the loader's own generator (worker base seeds) in derive_seed


class ClassificationDataModule(L.LightningDataModule):
    """Base of the project's image-classification data modules.

    Subclasses fill ``train_set``, ``val_set`` and ``test_set`` in ``setup``; this class turns them into
    loaders and decides what validation means:

    - ``val_split=None`` (the default, the paper's protocol): the test split is also the validation set,
      so model selection sees the test images and the numbers are comparable with the paper's;
    - ``val_split=5000`` (or a fraction such as ``0.1``): that many training images, stratified by class
      and chosen by ``val_split_seed`` alone, are held out as the validation set (evaluation transform, no
      augmentation); training uses the rest, and ``test_dataloader`` returns the test split, which a run
      then evaluates once, on the checkpoint chosen on validation.

    Batches are ``(images, labels)``: ``float32`` normalised ``(B, 3, H, W)`` and ``int64`` ``(B,)``.
    The training loader is a :class:`~sdd_lightning.data.resumable.ResumableDataLoader`: its sampler is a
    ``DistributedSampler`` for this process's rank (so Lightning leaves it in place under DDP) whose order
    comes from ``(seed, epoch)``, every sample's augmentation is seeded by ``(seed, epoch, index)``, and its
    position is saved in Lightning's checkpoints, so a run interrupted mid-epoch resumes exactly.
    Evaluation loaders are plain ``DataLoader``\\ s in the stored order (Lightning shards them under DDP).

    Args:
        root: Folder of the data set (see the subclass for the layout).
        batch_size: Training images per batch **per device**: with DDP on ``n`` devices one optimiser
            step sees ``n * batch_size`` images.
        eval_batch_size: Evaluation images per batch per device; ``None`` uses ``batch_size``.
        num_workers: ``DataLoader`` worker processes per device (0 loads in the main process).
        pin_memory: Page-lock host batches for faster, asynchronous copies to the GPU.
        seed: Seeds the training order and augmentation (see above); the run's seed in the configs.
        drop_last: Drop the last incomplete training batch.
        persistent_workers: Keep the workers alive between epochs (when ``num_workers > 0``).
        download: Fetch and extract the official archive in ``prepare_data`` when the files are not there
            yet (data sets with a ``location`` only).
        val_split: ``None`` to validate on the test split; else the training images to hold out for
            validation, as a number (``int``) or a fraction in (0, 1) (``float``).
        val_split_seed: Seed of which images are held out, independent of ``seed``.
    """

    name: ClassVar[str | None] = None
    """The data set's name, the option ``data=<name>`` of its config ``conf/data/<name>.yaml``. A subclass that
    sets it is registered under it (:mod:`sdd_lightning.data.registry`); bases that are no data set leave it."""
    num_classes: int
    location: DatasetLocation | None = None
    """Where a downloadable data set lives under ``root`` (``None``: not downloadable, found by the subclass)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name") is not None:
            register_datamodule(cls)

    def __init__(
        self,
        root: str | Path | None,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        persistent_workers: bool = True,
        download: bool = False,
        val_split: int | float | None = None,
        val_split_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        check_val_split(val_split)
        if isinstance(val_split_seed, bool) or not isinstance(val_split_seed, int) or val_split_seed < 0:
            raise ValueError(f"val_split_seed must be an integer >= 0, got {val_split_seed!r}")
        self.root = Path(root).expanduser() if root is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.drop_last = drop_last
        self.persistent_workers = persistent_workers
        if download and self.location is None:
            raise ValueError(f"{type(self).__name__} cannot be downloaded: set download=false and give data.root")
        self.download = download
        self.val_split = val_split
        self.val_split_seed = val_split_seed
        self.train_set: Dataset | None = None
        self.train_eval_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download and extract the official archive if ``download`` is set and the files are missing."""
        if self.location is not None:
            self.location.prepare(self.root, self.download)

    def _folder(self) -> Path:
        """The data set's folder under ``root``, or a ``DatasetError`` that names the layout and the fix."""
        if self.location is None:
            raise NotImplementedError(f"{type(self).__name__} finds its files itself")
        return self.location.find(self.root, self.download)

    def _rank_and_world_size(self) -> tuple[int, int]:
        """This process's global rank and the number of processes, from the attached trainer if any."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    # -- the splits ------------------------------------------------------------------------------
    def _splits_needed(self, stage: str | None) -> tuple[bool, bool]:
        """Whether ``setup(stage)`` needs the training split and the test split.

        With ``val_split`` the validation set comes out of the training split, and fitting or validating
        never reads the test split; without it the test split is the validation set.
        """
        holdout = self.val_split is not None
        train = stage in (None, "fit") or (stage == "validate" and holdout)
        test = stage in (None, "test", "predict") or (stage in ("fit", "validate") and not holdout)
        return train, test

    def _holdout(self, labels: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(training indices, validation indices)`` of the training split, or ``None`` without ``val_split``."""
        if self.val_split is None:
            return None
        return stratified_holdout(labels, self.val_split, self.val_split_seed)

    # -- the loaders -----------------------------------------------------------------------------
    def _missing(self, split: str) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__} has no {split} set yet: call setup() first (Trainer does)")

    def _eval_loader(self, dataset: Dataset | None, split: str) -> DataLoader:
        if dataset is None:
            raise self._missing(split)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            generator=torch.Generator(),  # its own: iterating never draws from the global generator
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches, resumable mid-epoch (see the class docstring)."""
        if self.train_set is None:
            raise self._missing("training")
        rank, world_size = self._rank_and_world_size()
        sampler = EpochSampler(
            len(self.train_set), num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, with_epoch=True
        )
        return ResumableDataLoader(
            SeededSamples(self.train_set, self.seed),
            sampler=sampler,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            generator=torch.Generator().manual_seed(derive_seed(self.seed, rank, _WORKER_STREAM)),
        )

    def val_dataloader(self) -> DataLoader:
        """Evaluation batches of the validation set (the test split unless ``val_split``), in a fixed order."""
        return self._eval_loader(self.val_set, "validation")

    def test_dataloader(self) -> DataLoader:
        """Evaluation batches of the test split, in a fixed order."""
        return self._eval_loader(self.test_set, "test")

    def train_eval_dataloader(self) -> DataLoader:
        """The training images (without the held-out ones) with the evaluation transform, in a fixed order.

        For measuring a network on what it was trained on (``sdd-eval --split train``).
        """
        return self._eval_loader(self.train_eval_set, "training")


class ImageFileDataModule(ClassificationDataModule):
    """Base of the data modules that decode image files (ImageNet, CUB-200-2011).

    Subclasses implement ``_image_split(train, transform)`` (a data set whose ``targets`` are its labels
    and whose ``transform`` attribute is applied to every image) and the two transforms; this class
    builds the splits from them, the held-out validation set included.

    Args:
        root: Folder of the data set (see the subclass).
        num_classes: Number of classes expected.
        crop_size: Side of the training and evaluation crops.
        resize_size: Side of the resize before cropping (see the subclass).
        **loader_options: The loader settings of :class:`ClassificationDataModule`.
    """

    def __init__(
        self, root: str | Path, *, num_classes: int, crop_size: int = 224, resize_size: int = 256, **loader_options: Any
    ) -> None:
        super().__init__(root, **loader_options)
        if num_classes < 1 or crop_size < 1 or resize_size < crop_size:
            raise ValueError(
                "need num_classes >= 1 and 1 <= crop_size <= resize_size, "
                f"got {num_classes}, {crop_size}, {resize_size}"
            )
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.class_names: list[str] | None = None

    def _image_split(self, train: bool, transform: Any) -> Dataset:
        """The official training (``True``) or test split with ``transform``, checked."""
        raise NotImplementedError

    def _train_transform(self) -> Any:
        raise NotImplementedError

    def _eval_transform(self) -> Any:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Index the splits the stage needs (once); with ``val_split``, carve the validation set out of training."""
        need_train, need_test = self._splits_needed(stage)
        if need_train and self.train_set is None:
            train = self._image_split(True, self._train_transform())
            plain = copy.copy(train)  # the same file list, with the evaluation transform
            plain.transform = self._eval_transform()
            holdout = self._holdout(train.targets)
            if holdout is None:
                self.train_set, self.train_eval_set = train, plain
            else:
                keep, held = (indices.tolist() for indices in holdout)
                self.train_set, self.train_eval_set = Subset(train, keep), Subset(plain, keep)
                self.val_set = Subset(plain, held)
        if need_test and self.test_set is None:
            self.test_set = self._image_split(False, self._eval_transform())
            if self.val_split is None:
                self.val_set = self.test_set
