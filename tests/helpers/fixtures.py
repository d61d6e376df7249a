"""Builders of small data sets in the real on-disk formats, for the data tests.

Each writes a few images per class in exactly the layout the real archive extracts to, so that the
data modules are tested on the same parsing paths as the real sets.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = 100


def cifar_split_dict(labels: np.ndarray, name: str, rng: np.random.Generator) -> dict:
    """One CIFAR-100 split as the official pickle holds it (random pixels, the given fine labels)."""
    return {
        "filenames": [f"{name}_{i:05d}.png" for i in range(len(labels))],
        "batch_label": f"{name} batch 1 of 1",
        "fine_labels": [int(label) for label in labels],
        "coarse_labels": [int(label) // 5 for label in labels],
        "data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
    }


def write_pickle(path: Path, content: object) -> None:
    """Pickle with protocol 2, as the official CIFAR files are."""
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=2)


def write_cifar100(root: Path, *, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}``; returns the ``cifar-100-python`` folder."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(CIFAR_CLASSES), per_class))
        write_pickle(folder / name, cifar_split_dict(labels, name, rng))
    write_pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(CIFAR_CLASSES)],
            "coarse_label_names": [f"coarse_{i}" for i in range(CIFAR_CLASSES // 5)],
        },
    )
    return folder


def write_image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A random RGB image of ``size`` (width, height), saved in the format of the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
    train_per_class: int = 3,
    val_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/<wnid>/*.JPEG`` in ImageNet's layout, images of varied sizes; returns root."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in classes:
            for i in range(count):
                size = (int(rng.integers(40, 80)), int(rng.integers(30, 70)))
                write_image(root / split / wnid / f"{wnid}_{i}.JPEG", size, rng)
    return root


def write_cub(root: Path, *, num_classes: int = 3, per_class: int = 4, train_per_class: int = 2, seed: int = 0) -> Path:
    """Write ``root/CUB_200_2011/`` in the official layout; returns that folder.

    Image ``i`` (1-based, ``images.txt`` order) of class ``c`` is in the training split when it is
    one of the class's first ``train_per_class`` images.
    """
    rng = np.random.default_rng(seed)
    folder = root / "CUB_200_2011"
    classes, images, labels, split = [], [], [], []
    image_id = 0
    for c in range(1, num_classes + 1):
        class_dir = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {class_dir}")
        for i in range(per_class):
            image_id += 1
            relative = f"{class_dir}/Bird_{c}_{i:04d}_{image_id}.jpg"
            write_image(folder / "images" / relative, (int(rng.integers(40, 90)), int(rng.integers(40, 90))), rng)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i < train_per_class)}")
    for name, lines in (
        ("classes.txt", classes),
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
    ):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder
