"""Data modules for small image sets that fit in memory as one ``uint8`` tensor (CIFAR, the shapes set).

Two interchangeable training pipelines, chosen by ``device_resident``:

- the standard one: a ``DataLoader`` over :class:`TensorImageDataset`, per-sample torchvision
  transforms in worker processes, a ``DistributedSampler`` for this process's rank;
- the device-resident one: the whole set on the training device, batched, cropped, flipped and
  normalised there by :class:`~sdd_lightning.data.device_loader.DeviceResidentLoader`, no workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from sdd_lightning.data.base import ClassificationDataModule
from sdd_lightning.data.device_loader import DeviceResidentLoader
from sdd_lightning.data.transforms import cifar_eval_transform, cifar_train_transform
from sdd_lightning.data.views import ViewedImageDataset, ViewSet, fingerprint_images

__all__ = ["InMemoryImageDataModule", "TensorImageDataset"]


class TensorImageDataset(Dataset):
    """Samples ``(transform(images[i]), labels[i])`` of an in-memory ``uint8`` image tensor.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``.
        labels: Class indices ``(N,)``.
        transform: Applied to each ``(3, H, W)`` image; ``None`` returns the ``uint8`` image.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class InMemoryImageDataModule(ClassificationDataModule):
    """Base for data sets loaded whole into memory; subclasses implement ``_load_split``.

    Training augmentation is the CIFAR one (random crop with ``padding``, horizontal flip) on both
    pipelines; evaluation only normalises.

    Args:
        root: Folder of the data set (see the subclass).
        device_resident: Hold the set on the training device and augment there, without workers
            (see :class:`~sdd_lightning.data.device_loader.DeviceResidentLoader`); the device is the
            attached trainer's (``trainer.strategy.root_device``), else the CPU.
        augment: Random crop and flip for training; ``False`` trains on the plain images.
        padding: Padding of the random crop.
        with_views: Training batches are ``(images, labels, views)``, ``views`` int64 ``(B, 4)``: each image's
            index in the whole training split and the view it drew, ``(dy, dx, flip)``; the images are the same
            as without it (see :mod:`sdd_lightning.data.views`). What the teacher view cache reads; ``view_set()``
            describes the views after ``setup``.
        **loader_kwargs: ``batch_size`` (per device), ``eval_batch_size``, ``num_workers``,
            ``pin_memory``, ``seed``, ``drop_last``, ``persistent_workers``, ``val_split``, ``val_split_seed``; see
            :class:`~sdd_lightning.data.base.ClassificationDataModule`.
    """

    mean: Sequence[float]
    std: Sequence[float]

    def __init__(
        self,
        root: str | Path | None,
        *,
        device_resident: bool = False,
        augment: bool = True,
        padding: int = 4,
        with_views: bool = False,
        **loader_kwargs,
    ) -> None:
        super().__init__(root, **loader_kwargs)
        self.device_resident = device_resident
        self.augment = augment
        self.padding = padding
        self.with_views = with_views
        self.train_source_index: torch.Tensor | None = None
        self._view_set: ViewSet | None = None
        self.train_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.test_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._device_copies: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The split as ``(uint8 images (N, 3, H, W), int64 labels (N,))``, checked."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load the splits the stage needs (once; later calls reuse them); with ``val_split``, carve out validation."""
        need_train, need_test = self._splits_needed(stage)
        evaluation = cifar_eval_transform(self.mean, self.std)
        if need_train and self.train_data is None:
            images, labels = self._load_split(train=True)
            holdout = self._holdout(labels)
            if holdout is None:
                self.train_data = (images, labels)
                self.train_source_index = torch.arange(len(images))
            else:
                keep, held = holdout
                self.train_data = (images[keep], labels[keep])
                self.train_source_index = torch.as_tensor(keep, dtype=torch.long)
                self.val_data = (images[held], labels[held])
                self.val_set = TensorImageDataset(*self.val_data, evaluation)
            transform = self.train_transform(images.shape[-1]) if self.augment else evaluation
            if self.with_views:
                fingerprint = fingerprint_images(images, self.mean, self.std, self.padding)
                self._view_set = ViewSet(len(images), self.padding, fingerprint)
                self.train_set = ViewedImageDataset(*self.train_data, self.train_source_index, transform, self.padding)
            else:
                self.train_set = TensorImageDataset(*self.train_data, transform)
            self.train_eval_set = TensorImageDataset(*self.train_data, evaluation)
        if need_test and self.test_data is None:
            self.test_data = self._load_split(train=False)
            self.test_set = TensorImageDataset(*self.test_data, evaluation)
            if self.val_split is None:
                self.val_data, self.val_set = self.test_data, self.test_set

    def train_transform(self, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training augmentation of the standard pipeline: CIFAR's crop (``padding``) and flip, normalised."""
        return cifar_train_transform(self.mean, self.std, self.padding, size)

    def view_set(self) -> ViewSet:
        """The views training batches index into (``with_views=True``, after ``setup("fit")``)."""
        if self._view_set is None:
            raise RuntimeError(f"{type(self).__name__} has no view set: construct it with with_views=True, call setup")
        return self._view_set

    def _device_loader(self, split: str, *, train: bool = False) -> DeviceResidentLoader:
        data = {"training": self.train_data, "validation": self.val_data, "test": self.test_data}[split]
        if data is None:
            raise self._missing(split)
        rank, world_size = self._rank_and_world_size()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        key = ("test" if data is self.test_data else split, device)
        if key not in self._device_copies:  # one copy per split and device, shared by later loaders
            self._device_copies[key] = (data[0].to(device), data[1].to(device))
        return DeviceResidentLoader(
            *self._device_copies[key],
            self.batch_size if train else self.eval_batch_size,
            mean=self.mean,
            std=self.std,
            shuffle=train,
            augment=train and self.augment,
            padding=self.padding,
            drop_last=train and self.drop_last,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            device=device,
            source_index=self.train_source_index if train and self.with_views else None,
        )

    def teardown(self, stage: str | None = None) -> None:
        """Release the device copies of the data (the host copies stay for the next stage)."""
        self._device_copies.clear()

    def train_dataloader(self) -> DataLoader | DeviceResidentLoader:
        """Shuffled, augmented training batches (on the device when ``device_resident``), resumable mid-epoch."""
        if self.device_resident:
            return self._device_loader("training", train=True)
        return super().train_dataloader()

    def val_dataloader(self) -> DataLoader | DeviceResidentLoader:
        """Validation batches in the stored order (on the device when ``device_resident``)."""
        if self.device_resident:
            return self._device_loader("validation")
        return super().val_dataloader()

    def test_dataloader(self) -> DataLoader | DeviceResidentLoader:
        """Test batches in the stored order (on the device when ``device_resident``)."""
        if self.device_resident:
            return self._device_loader("test")
        return super().test_dataloader()
