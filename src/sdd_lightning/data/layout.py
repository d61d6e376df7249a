"""Finding a data set's folder under the configured root, and downloading its archive."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets import utils as tv_utils

from sdd_lightning.data.errors import DatasetError

__all__ = ["download_archive", "locate_dataset_dir"]


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
