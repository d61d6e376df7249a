"""Image files on disk: decoding with errors that name the file, and a data set over a list of files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from sdd_lightning.errors import DatasetError

__all__ = ["ImageListDataset", "load_rgb_image"]


def load_rgb_image(path: str | Path) -> Image.Image:
    """Decode an image file completely, as RGB (grey, CMYK and palette images are converted).

    Used as the loader of every file-based data set so that a missing, truncated or corrupt image
    stops the run with the offending path, also when it happens inside a ``DataLoader`` worker.

    Raises:
        DatasetError: The file cannot be opened or decoded; the message names the path.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # forces the full decode inside the try
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DatasetError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


class ImageListDataset(Dataset):
    """Samples ``(transform(image), label)`` from a list of image files and their class indices.

    Args:
        paths: Image files.
        labels: Class index of each file.
        transform: Applied to the decoded RGB ``PIL.Image``.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable[[Any], Any]) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def targets(self) -> list[int]:
        """The labels, under the name torchvision's data sets use."""
        return self.labels

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(load_rgb_image(self.paths[index])), self.labels[index]
