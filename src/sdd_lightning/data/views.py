"""The finite view set of the CIFAR augmentation, and the views a training batch drew.

``RandomCrop(H, padding=p)`` + ``RandomHorizontalFlip`` can only produce ``(2p + 1)^2 * 2`` views of an image
(162 for CIFAR's ``p = 4``): a row offset and a column offset in ``[0, 2p]`` of the zero-padded image, and a
flip. A training batch that carries, for every image, its index in the training split and that view is what
a cache of the teacher's outputs needs to be exact (:mod:`sdd_lightning.training.teacher_cache`).

Both pipelines expose the views they drew without drawing anything else: the device-resident loader returns
the offsets it drew (:func:`~sdd_lightning.data.gpu_augment.random_crop_flip`), and the standard pipeline
passes a position mask through the same torchvision transform call as the image (:class:`ViewedImageDataset`):
geometric transforms apply the same crop and flip to every input of a call, so the mask shows the view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

__all__ = ["ViewSet", "ViewedImageDataset", "fingerprint_images"]


@dataclass(frozen=True)
class ViewSet:
    """The views of a training split: what a batch's ``views`` rows ``(index, dy, dx, flip)`` index into.

    Args:
        num_images: Images of the whole training split (held-out validation images included: indices are into it).
        padding: Padding of the random crop; offsets are in ``[0, 2 * padding]``.
        fingerprint: A hash of the training images, the normalisation and the padding: what the images are.
    """

    num_images: int
    padding: int
    fingerprint: str

    @property
    def views_per_image(self) -> int:
        side = 2 * self.padding + 1
        return side * side * 2

    def flat_ids(self, views: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` rows ``(index, dy, dx, flip)`` -> ``(B,)`` entries in ``[0, num_images * views_per_image)``."""
        side = 2 * self.padding + 1
        index, dy, dx, flip = views.long().unbind(1)
        if bool(((index < 0) | (index >= self.num_images) | (dy < 0) | (dy >= side) | (dx < 0) | (dx >= side)).any()):
            raise ValueError(f"views outside the view set of {self}: {views.tolist()}")
        return (index * side * side + dy * side + dx) * 2 + flip


def fingerprint_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], padding: int) -> str:
    """A short hash of a ``uint8`` image set and how it is normalised and padded (what a cached view depends on)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((tuple(images.shape), tuple(mean), tuple(std), padding)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


class ViewedImageDataset(Dataset):
    """Samples ``(image, label, view)`` of an in-memory image set: the view the random transform drew.

    ``view`` is int64 ``(index, dy, dx, flip)`` with ``index = source_index[i]`` (the image's place in the whole
    training split). The transform is called as ``transform(image, mask)`` with a position mask, so it draws
    exactly what ``transform(image)`` draws and returns the same image; the mask is then checked to be a
    ``padding``-padded crop of the source, flipped or not, which refuses any other geometric augmentation.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``.
        labels: Class indices ``(N,)``.
        source_index: ``(N,)`` indices of the images in the whole training split.
        transform: A torchvision ``transforms.v2`` pipeline (crop with ``padding`` and flip, or none).
        padding: Padding of the crop.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        source_index: torch.Tensor,
        transform: Callable,
        padding: int,
    ) -> None:
        height, width = images.shape[-2:]
        if not 0 <= padding < min(height, width) // 2:
            raise ValueError(f"padding must be in [0, {min(height, width) // 2}) for the view set, got {padding}")
        self.images, self.labels, self.source_index = images, labels.long(), source_index.long()
        self.transform = transform
        self.padding = padding
        positions = torch.arange(1, height * width + 1, dtype=torch.int32).view(1, height, width)
        self._positions = tv_tensors.Mask(positions)
        padded = torch.nn.functional.pad(positions, (padding,) * 4)
        self._padded = padded[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, mask = self.transform(self.images[i], self._positions)
        view = self._view(mask.as_subclass(torch.Tensor)[0])
        return image, int(self.labels[i]), torch.cat([self.source_index[i : i + 1], view])

    def _view(self, mask: torch.Tensor) -> torch.Tensor:
        """``(dy, dx, flip)`` of a transformed position mask, checked against the whole crop."""
        height, width = mask.shape
        p = self.padding
        centre = int(mask[height // 2, width // 2]) - 1  # always inside the source image, never padding
        row, col = divmod(centre, width)
        flip = int(mask[height // 2, width // 2 - 1]) - 1 > centre
        dy = row - height // 2 + p
        dx = col - (width - 1 - width // 2 if flip else width // 2) + p
        crop = self._padded[dy : dy + height, dx : dx + width] if 0 <= dy <= 2 * p and 0 <= dx <= 2 * p else None
        if crop is None or not torch.equal(crop.flip(1) if flip else crop, mask):
            raise ValueError(
                "the training transform draws views outside the finite crop-and-flip set (another geometric "
                "augmentation): the teacher view cache cannot be exact with it"
            )
        return torch.tensor([dy, dx, int(flip)])
