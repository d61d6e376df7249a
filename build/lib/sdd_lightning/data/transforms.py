"""The image transforms of the paper's recipes, as torchvision ``transforms.v2`` pipelines.

Every pipeline accepts a PIL image or a ``uint8`` tensor ``(3, H, W)`` and returns a normalised
``float32`` tensor ``(3, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar_eval_transform",
    "cifar_train_transform",
    "cub_eval_transform",
    "cub_train_transform",
    "imagenet_eval_transform",
    "imagenet_train_transform",
    "to_normalized_float",
]

# The constants of the official code and of the CRD teachers (mdistiller, RepDistiller).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_normalized_float(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The common tail of every pipeline: to an image tensor, to ``float32`` in [0, 1], then normalise."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def cifar_train_transform(
    mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD, padding: int = 4, size: int = 32
) -> v2.Compose:
    """CIFAR training augmentation: zero-padded random crop (32, padding 4) and horizontal flip."""
    return v2.Compose(
        [v2.ToImage(), v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip(), to_normalized_float(mean, std)]
    )


def cifar_eval_transform(mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD) -> v2.Compose:
    """CIFAR evaluation: normalisation only."""
    return to_normalized_float(mean, std)


def imagenet_train_transform(crop_size: int = 224) -> v2.Compose:
    """ImageNet training augmentation: ``RandomResizedCrop`` (scale 0.08-1) and horizontal flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop_size, antialias=True),
            v2.RandomHorizontalFlip(),
            to_normalized_float(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagenet_eval_transform(crop_size: int = 224, resize_size: int = 256) -> v2.Compose:
    """ImageNet evaluation: resize the shorter side to 256, then a 224 centre crop."""
    return v2.Compose(
        [
            v2.Resize(resize_size, antialias=True),
            v2.CenterCrop(crop_size),
            to_normalized_float(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def cub_train_transform(crop_size: int = 224, resize_size: int = 256) -> v2.Compose:
    """CUB-200-2011 training augmentation (the official SDD recipe).

    Resize to a ``256 x 256`` square (aspect ratio not kept), random 224 crop, horizontal flip.
    """
    return v2.Compose(
        [
            v2.Resize((resize_size, resize_size), antialias=True),
            v2.RandomCrop(crop_size),
            v2.RandomHorizontalFlip(),
            to_normalized_float(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def cub_eval_transform(crop_size: int = 224, resize_size: int = 256) -> v2.Compose:
    """CUB-200-2011 evaluation: resize to ``256 x 256``, then a 224 centre crop."""
    return v2.Compose(
        [
            v2.Resize((resize_size, resize_size), antialias=True),
            v2.CenterCrop(crop_size),
            to_normalized_float(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
