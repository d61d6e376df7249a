"""ImageNet (ILSVRC-2012) in the ImageFolder layout, with the standard ResNet augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from sdd_lightning.data.base import ImageFileDataModule
from sdd_lightning.data.image_files import load_rgb_image
from sdd_lightning.data.transforms import imagenet_eval_transform, imagenet_train_transform
from sdd_lightning.errors import DatasetError

__all__ = ["ImageNetDataModule"]

_LAYOUT = "  {root}/train/<wnid>/*.JPEG   (e.g. train/n01440764/n01440764_10026.JPEG)\n  {root}/val/<wnid>/*.JPEG"
_HOW_TO_GET = (
    "ImageNet cannot be downloaded automatically (its terms require registration at image-net.org): download "
    "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, extract the training archive (and its per-class "
    "tars) into train/<wnid>/, sort the validation images into val/<wnid>/ (e.g. with the widely used "
    "valprep.sh), then set data.root=... to the folder that holds train/ and val/"
)


class ImageNetDataModule(ImageFileDataModule):
    """ImageNet-1k classification from ``root/train/<wnid>/`` and ``root/val/<wnid>/`` image folders.

    Training: ``RandomResizedCrop(224)`` and horizontal flip; evaluation: resize the shorter side to
    256 and centre-crop 224; both normalised with the ImageNet mean and standard deviation. Class
    indices follow the sorted folder names of each split, which must be the same ``num_classes``
    folders in both. Images are decoded by PIL in ``num_workers`` worker processes per device; an
    unreadable image stops the run with its path.

    Args:
        root: Folder holding ``train/`` and ``val/``.
        num_classes: Number of class folders expected (1000 for ImageNet-1k; smaller for subsets).
        **options: ``crop_size`` (224) and ``resize_size`` (256, the shorter side before the evaluation centre
            crop) of :class:`~sdd_lightning.data.base.ImageFileDataModule`, and the loader settings of
            :class:`~sdd_lightning.data.base.ClassificationDataModule` (``batch_size`` per device, 256 per GPU
            on 2 GPUs in the paper, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``seed``,
            ``drop_last``, ``persistent_workers``, ``val_split`` and ``val_split_seed``: a validation set held out of
            ``train/``; without it ``val/`` is both the validation and the test split).
    """

    name = "imagenet"

    def __init__(self, root: str | Path = "data/imagenet", *, num_classes: int = 1000, **options: Any) -> None:
        super().__init__(root, num_classes=num_classes, **options)

    def _split_dir(self, split: str) -> Path:
        directory = self.root / split
        if not directory.is_dir():
            found = "does not exist" if not self.root.exists() else f"has no {split}/ folder"
            raise DatasetError(
                f"ImageNet not found: {self.root} {found}. Expected the ImageFolder layout:\n"
                f"{_LAYOUT.format(root=self.root)}\n{_HOW_TO_GET}."
            )
        return directory

    def _image_folder(self, split: str, transform: Any) -> ImageFolder:
        directory = self._split_dir(split)
        try:
            dataset = ImageFolder(str(directory), transform=transform, loader=load_rgb_image)
        except FileNotFoundError as err:  # no class folders, or a class folder without images
            raise DatasetError(
                f"{directory} is not a usable ImageFolder split: {err}\nExpected:\n{_LAYOUT.format(root=self.root)}"
            ) from err
        if len(dataset.classes) != self.num_classes:
            raise DatasetError(
                f"{directory} has {len(dataset.classes)} class folders but num_classes={self.num_classes} "
                "(set data.num_classes for a subset)"
            )
        if self.class_names is not None and dataset.classes != self.class_names:
            missing = sorted(set(self.class_names) ^ set(dataset.classes))[:5]
            raise DatasetError(
                f"the class folders of {directory} differ from the other split's (e.g. {missing}); "
                "train/ and val/ must hold the same <wnid> folders"
            )
        self.class_names = dataset.classes
        return dataset

    def _image_split(self, train: bool, transform: Any) -> ImageFolder:
        return self._image_folder("train" if train else "val", transform)

    def _train_transform(self) -> Any:
        return imagenet_train_transform(self.crop_size)

    def _eval_transform(self) -> Any:
        return imagenet_eval_transform(self.crop_size, self.resize_size)
