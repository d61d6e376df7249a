"""CUB-200-2011 from its official archive layout, with the SDD paper's augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd_lightning.data.base import ImageFileDataModule
from sdd_lightning.data.image_files import ImageListDataset
from sdd_lightning.data.layout import DatasetLocation
from sdd_lightning.data.transforms import cub_eval_transform, cub_train_transform
from sdd_lightning.errors import DatasetError

__all__ = ["CUB200_MD5", "CUB200_URL", "Cub200DataModule", "CubIndex", "read_cub200_index"]

CUB200_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB200_MD5 = "97eceeb196236b17998738112f37df78"
_METADATA = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
CUB200_LOCATION = DatasetLocation(
    name="CUB-200-2011",
    folder="CUB_200_2011",
    required=(*_METADATA, "images"),
    layout="images/<class>/*.jpg, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt",
    url=CUB200_URL,
    md5=CUB200_MD5,
    size="1.1 GB",
)


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


class Cub200DataModule(ImageFileDataModule):
    """CUB-200-2011 birds (5,994 training and 5,794 test images, 200 classes), as in the SDD paper.

    Reads the official archive's layout ``CUB_200_2011/{images/, images.txt, image_class_labels.txt,
    train_test_split.txt, classes.txt}``; ``root`` may be the folder that contains ``CUB_200_2011/``
    or that folder itself. The split is the official one from ``train_test_split.txt``; the test split
    is the validation set unless ``val_split`` holds one out of training. Training: resize to
    ``256 x 256``, random 224 crop, horizontal flip; evaluation: resize to ``256 x 256``, centre crop 224;
    ImageNet mean and standard deviation.

    Args:
        root: Where the data set is (or goes, with ``download``).
        num_classes: Classes listed in ``classes.txt`` (200 for the real set).
        **options: ``crop_size`` (224) and ``resize_size`` (256, the side of the square resize before cropping)
            of :class:`~sdd_lightning.data.base.ImageFileDataModule`, and the loader settings of
            :class:`~sdd_lightning.data.base.ClassificationDataModule`: ``batch_size`` per device (64 in the
            official recipe), ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``seed``, ``drop_last`` (the
            official training loader drops the last batch; the CUB config sets it), ``persistent_workers``,
            ``download`` (fetch the official archive, 1.1 GB, md5-checked, when the files are not there),
            ``val_split`` and ``val_split_seed`` (a validation set held out of training).
    """

    name = "cub200"
    location = CUB200_LOCATION

    def __init__(self, root: str | Path = "data", *, num_classes: int = 200, **options: Any) -> None:
        super().__init__(root, num_classes=num_classes, **options)
        self.index: CubIndex | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read and check the metadata (once), then build the splits the stage needs."""
        if self.index is None:
            self.index = read_cub200_index(self._folder(), self.num_classes)
            self.class_names = self.index.class_names
        super().setup(stage)

    def _image_split(self, train: bool, transform: Any) -> ImageListDataset:
        return ImageListDataset(*self.index.split(train=train), transform)

    def _train_transform(self) -> Any:
        return cub_train_transform(self.crop_size, self.resize_size)

    def _eval_transform(self) -> Any:
        return cub_eval_transform(self.crop_size, self.resize_size)
