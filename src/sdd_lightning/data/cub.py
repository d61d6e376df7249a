"""CUB-200-2011 from its official archive layout, with the SDD paper's augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdd_lightning.data.base import ClassificationDataModule
from sdd_lightning.data.errors import DatasetError
from sdd_lightning.data.image_files import ImageListDataset
from sdd_lightning.data.layout import download_archive, locate_dataset_dir
from sdd_lightning.data.transforms import cub_eval_transform, cub_train_transform

__all__ = ["CUB200_MD5", "CUB200_URL", "Cub200DataModule", "CubIndex", "read_cub200_index"]

CUB200_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB200_MD5 = "97eceeb196236b17998738112f37df78"
_FOLDER = "CUB_200_2011"
_METADATA = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


@dataclass(frozen=True)
class CubIndex:
    """The checked contents of the CUB metadata files, in ``images.txt`` order.

    Attributes:
        paths: Image files.
        labels: Class index of each image, 0-based.
        is_train: Whether each image belongs to the training split.
        class_names: Class names from ``classes.txt``, in label order.
    """

    paths: list[Path]
    labels: list[int]
    is_train: list[bool]
    class_names: list[str]

    def split(self, train: bool) -> tuple[list[Path], list[int]]:
        """Paths and labels of the training (``True``) or test split."""
        keep = [i for i, t in enumerate(self.is_train) if t == train]
        return [self.paths[i] for i in keep], [self.labels[i] for i in keep]


def _read_table(path: Path) -> dict[int, str]:
    """``<integer id> <value>`` lines as a dict; any malformed or repeated line is an error."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing: the CUB_200_2011 folder must hold {', '.join(_METADATA)} and images/")
    table: dict[int, str] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        key = int(fields[0])
        if key in table:
            raise DatasetError(f"{path}:{number}: id {key} appears twice")
        table[key] = fields[1].strip()
    return table


def read_cub200_index(folder: str | Path, num_classes: int = 200) -> CubIndex:
    """Read and cross-check ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` and ``classes.txt``.

    Args:
        folder: The ``CUB_200_2011`` folder.
        num_classes: Number of classes ``classes.txt`` must list.

    Raises:
        DatasetError: A file is missing or malformed, the files list different image ids, a label or
            split flag is out of range, the class count is wrong, or an image file is missing.
    """
    folder = Path(folder)
    images, labels, split, classes = (_read_table(folder / name) for name in _METADATA)
    if len(classes) != num_classes or set(classes) != set(range(1, num_classes + 1)):
        raise DatasetError(f"{folder / 'classes.txt'} lists {len(classes)} classes; expected ids 1..{num_classes}")
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        if table.keys() != images.keys():
            only = sorted(table.keys() ^ images.keys())[:5]
            raise DatasetError(
                f"images.txt lists {len(images)} images but {name} {len(table)} (ids in only one of them, e.g. "
                f"{only}) in {folder}"
            )
    ids = sorted(images)
    bad_labels = [i for i in ids if not labels[i].isdigit() or not 1 <= int(labels[i]) <= num_classes]
    if bad_labels:
        raise DatasetError(
            f"{folder / 'image_class_labels.txt'}: labels must be 1..{num_classes}; image {bad_labels[0]} has "
            f"{labels[bad_labels[0]]!r} ({len(bad_labels)} bad)"
        )
    bad_flags = [i for i in ids if split[i] not in ("0", "1")]
    if bad_flags:
        raise DatasetError(
            f"{folder / 'train_test_split.txt'}: flags must be 0 or 1; image {bad_flags[0]} has {split[bad_flags[0]]!r}"
        )
    paths = [folder / "images" / images[i] for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} images listed in images.txt are missing, e.g. {missing[0]}")
    return CubIndex(
        paths=paths,
        labels=[int(labels[i]) - 1 for i in ids],
        is_train=[split[i] == "1" for i in ids],
        class_names=[classes[c] for c in range(1, num_classes + 1)],
    )


class Cub200DataModule(ClassificationDataModule):
    """CUB-200-2011 birds (5,994 training and 5,794 test images, 200 classes), as in the SDD paper.

    Reads the official archive's layout ``CUB_200_2011/{images/, images.txt, image_class_labels.txt,
    train_test_split.txt, classes.txt}``; ``root`` may be the folder that contains ``CUB_200_2011/``
    or that folder itself. The split is the official one from ``train_test_split.txt``; the test split
    is the validation set. Training: resize to ``256 x 256``, random 224 crop, horizontal flip;
    evaluation: resize to ``256 x 256``, centre crop 224; ImageNet mean and standard deviation.

    Args:
        root: Where the data set is (or goes, with ``download``).
        download: Fetch and extract the official archive (1.1 GB, md5-checked) in ``prepare_data``
            when the files are not there yet.
        num_classes: Classes listed in ``classes.txt`` (200 for the real set).
        crop_size: Side of the training and evaluation crops.
        resize_size: Side of the square resize before cropping.
        batch_size: Training images per batch **per device** (the official recipe: 64).
        eval_batch_size: Evaluation images per batch per device; ``None`` uses ``batch_size``.
        num_workers: Decoding workers per device.
        pin_memory: Page-lock host batches for faster copies to the GPU.
        seed: Seed of the training order and augmentation (see ``ClassificationDataModule``).
        drop_last: Drop the last incomplete training batch.
        persistent_workers: Keep workers alive between epochs.
    """

    def __init__(
        self,
        root: str | Path = "data",
        *,
        download: bool = False,
        num_classes: int = 200,
        crop_size: int = 224,
        resize_size: int = 256,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            root,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
            drop_last=drop_last,
            persistent_workers=persistent_workers,
        )
        self.download = download
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.index: CubIndex | None = None
        self.class_names: list[str] | None = None

    def _located(self) -> Path | None:
        return locate_dataset_dir(self.root, _FOLDER, (*_METADATA, "images"))

    def prepare_data(self) -> None:
        """Download and extract the official archive if ``download`` is set and the folder is missing."""
        folder = self._located()
        if not self.download or (folder is not None and all((folder / f).is_file() for f in _METADATA)):
            return
        target = self.root.parent if self.root.name == _FOLDER else self.root
        download_archive(CUB200_URL, target, CUB200_MD5)

    def _folder(self) -> Path:
        folder = self._located()
        if folder is None:
            hint = (
                "download=True is set but prepare_data() has not run: call prepare_data() before setup() "
                "(the Trainer does both)"
                if self.download
                else f"set data.download=true (download=True) to fetch {CUB200_URL} (1.1 GB, md5-checked)"
            )
            raise DatasetError(
                f"CUB-200-2011 not found under {self.root}. Expected the official layout:\n"
                f"  {self.root}/{_FOLDER}/images/<class>/*.jpg, images.txt, image_class_labels.txt, "
                f"train_test_split.txt, classes.txt\n"
                f"(data.root may also point at {_FOLDER}/ itself). Fix: {hint}, or set data.root=... to the "
                f"folder that holds {_FOLDER}/."
            )
        return folder

    def setup(self, stage: str | None = None) -> None:
        """Read and check the metadata (once) and build the splits the stage needs."""
        if self.index is None:
            self.index = read_cub200_index(self._folder(), self.num_classes)
            self.class_names = self.index.class_names
        if stage in (None, "fit") and self.train_set is None:
            transform = cub_train_transform(self.crop_size, self.resize_size)
            self.train_set = ImageListDataset(*self.index.split(train=True), transform)
        if self.val_set is None:
            self.val_set = ImageListDataset(
                *self.index.split(train=False), cub_eval_transform(self.crop_size, self.resize_size)
            )
