"""CIFAR-100 from the official python pickles, with the standard and the device-resident pipeline."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sdd_lightning.data.in_memory import InMemoryImageDataModule
from sdd_lightning.data.layout import DatasetLocation
from sdd_lightning.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from sdd_lightning.errors import DatasetError

__all__ = ["CIFAR100_MD5", "CIFAR100_URL", "Cifar100DataModule", "read_cifar100_meta", "read_cifar100_split"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_LOCATION = DatasetLocation(
    name="CIFAR-100",
    folder="cifar-100-python",
    required=("train", "test", "meta"),
    layout="train, test, meta (the python version of the data set)",
    url=CIFAR100_URL,
    md5=CIFAR100_MD5,
    size="161 MB",
)
_NUM_CLASSES = 100
_IMAGE_SHAPE = (3, 32, 32)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, and refuses every other global.

    The CIFAR files need nothing more, and refusing the rest means a tampered file cannot run code.
    """

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} (a CIFAR pickle holds arrays and lists)")
        if module == "numpy.core.multiarray":  # NumPy 1.x name of the same functions
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: the CIFAR-100 folder must hold train, test and meta (delete it and set "
            "data.download=true to fetch a complete copy)"
        )
    try:
        with path.open("rb") as f:
            content = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as err:  # truncated (EOFError), garbage (UnpicklingError), ...
        raise DatasetError(
            f"{path} is truncated or corrupt ({type(err).__name__}: {err}); delete the folder and download it "
            "again (data.download=true)"
        ) from err
    if not isinstance(content, dict):
        raise DatasetError(f"{path} holds a {type(content).__name__}, not the dict of a CIFAR-100 pickle")
    return content


def _field(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise DatasetError(f"{path} has no '{key}' entry (keys: {sorted(content)}); is it a CIFAR-100 file?")
    return content[key]


def read_cifar100_meta(folder: str | Path) -> list[str]:
    """The 100 fine class names from ``folder/meta``, in label order.

    Raises:
        DatasetError: The file is missing or corrupt, or does not name exactly 100 classes.
    """
    path = Path(folder) / "meta"
    names = list(_field(_load_pickle(path), "fine_label_names", path))
    if len(names) != _NUM_CLASSES:
        raise DatasetError(f"{path} names {len(names)} fine classes; CIFAR-100 has {_NUM_CLASSES}")
    return names


def read_cifar100_split(folder: str | Path, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and fine labels of one split, checked for consistency.

    Args:
        folder: The ``cifar-100-python`` folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``uint8`` images ``(N, 3, 32, 32)`` (RGB) and ``int64`` labels ``(N,)`` in ``[0, 100)``.

    Raises:
        DatasetError: The file is missing or corrupt, its array has the wrong type or shape, the number
            of labels differs from the number of images, or a label is out of range.
    """
    path = Path(folder) / split
    content = _load_pickle(path)
    data = _field(content, "data", path)
    labels = _field(content, "fine_labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' must be a uint8 array (N, 3072), got {described}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DatasetError(f"{path} has {len(data)} image rows but {labels.size} fine labels")
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DatasetError(
            f"{path} has fine labels in [{labels.min()}, {labels.max()}]; CIFAR-100 labels are 0..{_NUM_CLASSES - 1}"
        )
    return torch.from_numpy(data.reshape(-1, *_IMAGE_SHAPE)), torch.from_numpy(labels)


class Cifar100DataModule(InMemoryImageDataModule):
    """CIFAR-100 (50,000 training and 10,000 test images, 32x32, 100 classes) for the paper's CIFAR recipes.

    Reads the official python pickles ``cifar-100-python/{train,test,meta}``; ``root`` may be the
    folder that contains ``cifar-100-python/`` or that folder itself. Any correct copy loads: the md5
    sum is checked only on an archive this module downloads. Training uses the official augmentation
    (random crop 32 with padding 4, horizontal flip), evaluation only normalisation, both with the
    CIFAR-100 mean and standard deviation. The test split is the validation set unless ``val_split`` holds
    one out of the training split (e.g. ``val_split=5000``: 50 images per class).

    Two training pipelines give batches of the same form: the standard ``DataLoader`` with
    ``num_workers`` workers, and ``device_resident=True``, which holds the whole ``uint8`` set (150 MB)
    on the training device and crops, flips and normalises each batch there, with no workers; it is
    DDP-safe (each rank a disjoint shard) and deterministic given ``seed`` and the epoch.

    Args:
        root: Where the data set is (or goes, with ``download``).
        device_resident: Use the on-device pipeline described above.
        augment: Random crop and flip for training.
        padding: Padding of the random crop.
        **loader_options: The loader settings of :class:`~sdd_lightning.data.base.ClassificationDataModule`
            (``batch_size`` per device, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``seed``,
            ``drop_last``, ``persistent_workers``, ``val_split``, ``val_split_seed``, and ``download``: fetch and
            extract the official archive, 161 MB, md5-checked, in ``prepare_data`` when the files are not there yet).
    """

    name = "cifar100"
    num_classes = _NUM_CLASSES
    location = CIFAR100_LOCATION
    mean = CIFAR100_MEAN
    std = CIFAR100_STD

    def __init__(
        self,
        root: str | Path = "data",
        *,
        device_resident: bool = False,
        augment: bool = True,
        padding: int = 4,
        **loader_options: Any,
    ) -> None:
        super().__init__(root, device_resident=device_resident, augment=augment, padding=padding, **loader_options)
        self.class_names: list[str] | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read and check the pickles the stage needs."""
        if self.class_names is None:
            self.class_names = read_cifar100_meta(self._folder())
        super().setup(stage)

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return read_cifar100_split(self._folder(), "train" if train else "test")
