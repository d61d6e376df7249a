"""ImageNetDataModule on a small ImageFolder tree: splits, classes, transforms, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.fixtures import write_image_folder
from torch.utils.data import DistributedSampler, SequentialSampler

from sdd_lightning.data import ImageNetDataModule
from sdd_lightning.errors import DatasetError

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagenet"), classes=WNIDS)


def make(root, stage="fit", **kwargs) -> ImageNetDataModule:
    kwargs = {"num_classes": 3, "batch_size": 4, "num_workers": 0, "pin_memory": False} | kwargs
    dm = ImageNetDataModule(root, **kwargs)
    dm.setup(stage)
    return dm


def copy_tree(source: Path, tmp_path: Path) -> Path:
    shutil.copytree(source, tmp_path / "imagenet")
    return tmp_path / "imagenet"


def test_splits_and_classes(imagenet_root):
    dm = make(imagenet_root)
    assert dm.num_classes == 3 and dm.class_names == list(WNIDS)
    assert len(dm.train_set) == 9 and len(dm.val_set) == 6
    assert sorted(label for _, label in dm.val_set.samples) == [0, 0, 1, 1, 2, 2]
    assert dm.train_set.class_to_idx == dm.val_set.class_to_idx


def test_batches_and_transforms(imagenet_root):
    dm = make(imagenet_root, eval_batch_size=6)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, DistributedSampler) and isinstance(val.sampler, SequentialSampler)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(val))
    assert xv.shape == (6, 3, 224, 224) and yv.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(next(iter(dm.val_dataloader()))[0], xv)  # evaluation is deterministic
    assert torch.equal(next(iter(dm.test_dataloader()))[0], xv)
    # training crops are random: the same image twice gives different tensors
    torch.manual_seed(0)
    assert not torch.equal(dm.train_set[0][0], dm.train_set[0][0])
    # ImageNet normalisation: a uniformly grey image maps to (0.5 - mean) / std per channel
    grey = dm.val_set.transform(torch.full((3, 300, 260), 128, dtype=torch.uint8))
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(grey.mean((1, 2)), expected)


def test_crop_and_resize_sizes_are_configurable(imagenet_root):
    dm = make(imagenet_root, crop_size=64, resize_size=72)
    assert dm.train_set[0][0].shape == (3, 64, 64) and dm.val_set[0][0].shape == (3, 64, 64)


def test_validate_stage_reads_only_val(imagenet_root):
    dm = make(imagenet_root, stage="validate")
    assert dm.train_set is None and len(dm.val_set) == 6


@pytest.mark.parametrize("what", ["missing-root", "empty-root", "no-val"])
def test_missing_data_names_the_layout(tmp_path, imagenet_root, what):
    if what == "missing-root":
        root = tmp_path / "nowhere"
    elif what == "empty-root":
        root = tmp_path
    else:
        root = copy_tree(imagenet_root, tmp_path)
        shutil.rmtree(root / "val")
    with pytest.raises(DatasetError, match=r"train/<wnid>/\*\.JPEG(.|\n)*data\.root="):
        make(root)


def test_class_count_is_checked(imagenet_root):
    with pytest.raises(DatasetError, match="3 class folders but num_classes=1000"):
        make(imagenet_root, num_classes=1000)


def test_splits_with_different_classes_are_an_error(tmp_path, imagenet_root):
    root = copy_tree(imagenet_root, tmp_path)
    (root / "val" / WNIDS[2]).rename(root / "val" / "n99999999")
    with pytest.raises(DatasetError, match="differ from the other split"):
        make(root)


def test_class_folder_without_images_is_an_error(tmp_path, imagenet_root):
    root = copy_tree(imagenet_root, tmp_path)
    for image in (root / "train" / WNIDS[1]).iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="not a usable ImageFolder split"):
        make(root)


def test_corrupt_image_names_its_path_from_the_worker(tmp_path, imagenet_root):
    root = copy_tree(imagenet_root, tmp_path)
    broken = root / "val" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated JPEG
    dm = make(root, num_workers=1, eval_batch_size=6, persistent_workers=False)
    with pytest.raises(DatasetError, match=f"cannot read image {broken}"):
        next(iter(dm.val_dataloader()))
