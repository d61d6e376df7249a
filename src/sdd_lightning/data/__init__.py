"""LightningDataModules for CIFAR-100, ImageNet, CUB-200-2011 and the built-in shapes set.

Every module yields ``(images float32 (B, 3, H, W) normalised, labels int64 (B,))`` batches, takes
its ``batch_size`` per device, shards the data per rank under DDP, resumes its training loader exactly
in the middle of an epoch, and uses the test split as the validation set (the paper's protocol) unless
``val_split`` holds a validation set out of the training split. Problems with the data on disk raise
:class:`DatasetError` with the file and the fix.

Each data module names itself (``Cifar100DataModule.name == "cifar100"``), the option of its config
``conf/data/<name>.yaml``; ``available_datamodules()``, ``datamodule_class(name)`` and
``datamodule_name(target)`` read those names (:mod:`sdd_lightning.data.registry`).
"""

from sdd_lightning.data.base import ClassificationDataModule
from sdd_lightning.data.cifar import Cifar100DataModule
from sdd_lightning.data.cub import Cub200DataModule
from sdd_lightning.data.device_loader import DeviceResidentLoader
from sdd_lightning.data.gpu_augment import normalize_batch, random_crop_flip
from sdd_lightning.data.imagenet import ImageNetDataModule
from sdd_lightning.data.in_memory import InMemoryImageDataModule, TensorImageDataset
from sdd_lightning.data.registry import available_datamodules, datamodule_class, datamodule_name
from sdd_lightning.data.resumable import EpochSampler, ResumableDataLoader, SeededSamples
from sdd_lightning.data.splits import stratified_holdout
from sdd_lightning.data.synthetic import SyntheticDataModule, generate_shapes
from sdd_lightning.errors import DatasetError

__all__ = [
    "Cifar100DataModule",
    "ClassificationDataModule",
    "Cub200DataModule",
    "DatasetError",
    "DeviceResidentLoader",
    "EpochSampler",
    "ImageNetDataModule",
    "InMemoryImageDataModule",
    "ResumableDataLoader",
    "SeededSamples",
    "SyntheticDataModule",
    "TensorImageDataset",
    "available_datamodules",
    "datamodule_class",
    "datamodule_name",
    "generate_shapes",
    "normalize_batch",
    "random_crop_flip",
    "stratified_holdout",
]
