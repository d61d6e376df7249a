"""What every data module of the project shares: the loader settings and how loaders are built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from sdd_lightning.data.layout import DatasetLocation
from sdd_lightning.data.seeding import derive_seed

__all__ = ["ClassificationDataModule", "ImageFileDataModule"]


class ClassificationDataModule(L.LightningDataModule):
    """Base of the project's image-classification data modules.

    Subclasses fill ``train_set`` and ``val_set`` in ``setup``; this class turns them into loaders.
    The paper reports the best test accuracy, so the test split doubles as the validation set:
    ``val_dataloader`` and ``test_dataloader`` return the same split.

    Batches are ``(images, labels)``: ``float32`` normalised ``(B, 3, H, W)`` and ``int64`` ``(B,)``.
    Loaders are plain ``DataLoader``\\ s with a ``RandomSampler`` (training) or ``SequentialSampler``
    (evaluation), so under DDP Lightning swaps in its ``DistributedSampler``; the training order then
    comes from Lightning's seed (``seed_everything``), otherwise from ``seed``.

    Args:
        root: Folder of the data set (see the subclass for the layout).
        batch_size: Training images per batch **per device**: with DDP on ``n`` devices one optimiser
            step sees ``n * batch_size`` images.
        eval_batch_size: Evaluation images per batch per device; ``None`` uses ``batch_size``.
        num_workers: ``DataLoader`` worker processes per device (0 loads in the main process).
        pin_memory: Page-lock host batches for faster, asynchronous copies to the GPU.
        seed: Seeds the training order (single device) and the base seed of the workers' augmentation
            randomness, mixed with the global rank. For bit-exact runs also call
            ``lightning.seed_everything(seed, workers=True)``.
        drop_last: Drop the last incomplete training batch.
        persistent_workers: Keep the workers alive between epochs (when ``num_workers > 0``).
        download: Fetch and extract the official archive in ``prepare_data`` when the files are not there
            yet (data sets with a ``location`` only).
    """

    num_classes: int
    location: DatasetLocation | None = None
    """Where a downloadable data set lives under ``root`` (``None``: not downloadable, found by the subclass)."""

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
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

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

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            split = "training" if train else "validation"
            raise RuntimeError(f"{type(self).__name__} has no {split} set yet: call setup() first (Trainer does)")
        generator = None
        if train:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self._rank_and_world_size()[0]))
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Evaluation batches of the test split, in a fixed order."""
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        """The same split and loader as ``val_dataloader`` (the paper's protocol)."""
        return self.val_dataloader()


class ImageFileDataModule(ClassificationDataModule):
    """Base of the data modules that decode image files (ImageNet, CUB-200-2011).

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
