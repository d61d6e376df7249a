"""Finding a data set's folder under the configured root, downloading its archive, and saying what is missing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets import utils as tv_utils

from sdd_lightning.errors import DatasetError

__all__ = ["DatasetLocation", "download_archive", "locate_dataset_dir"]


def locate_dataset_dir(root: str | Path, folder: str, required: Sequence[str]) -> Path | None:
    """The data set's own folder: ``root/folder`` or ``root`` itself, whichever holds the files.

    Accepts both spellings users write, ``data.root=/data`` (the folder that contains
    ``cifar-100-python/``) and ``data.root=/data/cifar-100-python``.

    Args:
        root: The configured root.
        folder: The name of the data set's folder as its archive extracts it.
        required: Paths, relative to that folder, of which at least one marks it as the data set.

    Returns:
        The folder, or ``None`` when neither candidate holds any of ``required``.
    """
    root = Path(root).expanduser()
    for candidate in (root / folder, root):
        if any((candidate / name).exists() for name in required):
            return candidate
    return None


def download_archive(url: str, root: str | Path, md5: str, filename: str | None = None) -> None:
    """Download ``url`` into ``root``, check its md5 and extract it there.

    An archive already in ``root`` with the right md5 is not downloaded again. The md5 is checked on
    the downloaded archive only; the extracted files are not checked against anything.

    Raises:
        DatasetError: The download failed or the archive does not match ``md5``.
    """
    root = Path(root).expanduser()
    archive = root / (filename or url.rsplit("/", 1)[-1])
    try:
        tv_utils.download_and_extract_archive(url, download_root=str(root), filename=archive.name, md5=md5)
    except RuntimeError as err:  # torchvision's "File not found or corrupted." after the md5 check
        raise DatasetError(
            f"the download of {url} to {archive} failed its md5 check (expected {md5}): {err}. Delete the file "
            f"and retry, or download it by hand, check `md5sum {archive.name}` and extract it into {root}"
        ) from err
    except OSError as err:  # network errors (URLError is an OSError), disk full, permissions
        raise DatasetError(
            f"could not download {url} to {archive}: {err}. Download it by hand (md5 {md5}) and extract it into {root}"
        ) from err


@dataclass(frozen=True)
class DatasetLocation:
    """Where a downloadable data set lives under ``data.root``, and what to say when it is not there.

    Attributes:
        name: The data set's name in messages (``"CIFAR-100"``).
        folder: The folder its archive extracts to (``"cifar-100-python"``).
        required: Paths inside that folder that must all exist; the first ones also mark the folder as found.
        layout: What the folder holds, for the not-found message (``"train, test, meta"``).
        url: The official archive.
        md5: The archive's md5.
        size: The archive's size, for messages (``"161 MB"``).
    """

    name: str
    folder: str
    required: tuple[str, ...]
    layout: str
    url: str
    md5: str
    size: str

    def locate(self, root: str | Path) -> Path | None:
        """The data set's folder under ``root`` (``root/<folder>`` or ``root`` itself), or ``None``."""
        return locate_dataset_dir(root, self.folder, self.required)

    def prepare(self, root: str | Path, download: bool) -> None:
        """Downloads and extracts the archive into ``root`` when ``download`` is set and the files are missing."""
        root = Path(root).expanduser()
        folder = self.locate(root)
        if not download or (folder is not None and all((folder / f).exists() for f in self.required)):
            return
        download_archive(self.url, root.parent if root.name == self.folder else root, self.md5)

    def find(self, root: str | Path, download: bool) -> Path:
        """The data set's folder; a :class:`DatasetError` that names the layout and the fix when it is missing."""
        root = Path(root).expanduser()
        folder = self.locate(root)
        if folder is not None:
            return folder
        hint = (
            "download=True is set but prepare_data() has not run: call prepare_data() before setup() "
            "(the Trainer does both)"
            if download
            else f"set data.download=true (download=True) to fetch {self.url} ({self.size}, md5-checked)"
        )
        raise DatasetError(
            f"{self.name} not found under {root}. Expected:\n  {root}/{self.folder}/{self.layout}\n"
            f"(data.root may also point at {self.folder}/ itself). Fix: {hint}, or set data.root=... to the "
            f"folder that holds {self.folder}/."
        )
