"""Cub200DataModule on a small tree in the official CUB_200_2011 layout: split, labels, transforms, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.fixtures import write_cub
from torchvision.datasets import utils as tv_utils

from sdd_lightning.data import Cub200DataModule
from sdd_lightning.data.cub import CUB200_MD5, CUB200_URL
from sdd_lightning.errors import DatasetError


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cub")
    write_cub(root, num_classes=3, per_class=4, train_per_class=2)
    return root


def make(root, stage="fit", **kwargs) -> Cub200DataModule:
    kwargs = {"num_classes": 3, "batch_size": 3, "num_workers": 0} | kwargs
    dm = Cub200DataModule(root, **kwargs)
    dm.setup(stage)
    return dm


def copy_tree(source: Path, tmp_path: Path) -> Path:
    shutil.copytree(source / "CUB_200_2011", tmp_path / "CUB_200_2011")
    return tmp_path / "CUB_200_2011"


@pytest.mark.parametrize("subfolder", [False, True], ids=["parent-root", "CUB_200_2011-root"])
def test_official_split_and_labels(cub_root, subfolder):
    dm = make(cub_root / "CUB_200_2011" if subfolder else cub_root)
    assert dm.num_classes == 3 and dm.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert len(dm.train_set) == 6 and len(dm.val_set) == 6
    assert dm.train_set.labels == [0, 0, 1, 1, 2, 2] and dm.val_set.labels == [0, 0, 1, 1, 2, 2]
    # train_test_split.txt puts each class's first two images in training
    assert all(path.stem.split("_")[2] in ("0000", "0001") for path in dm.train_set.paths)


def is_crop_or_mirror(out: torch.Tensor, image: torch.Tensor, size: int) -> bool:
    """Whether ``out`` equals some ``size x size`` window of ``image``, or that window mirrored."""
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # (C, rows, cols, size, size), a view
    for candidate in (out, out.flip(-1)):
        corner_matches = (windows[:, :, :, 0, 0] == candidate[:, 0, 0, None, None]).all(0)
        if any(torch.equal(windows[:, i, j], candidate) for i, j in corner_matches.nonzero().tolist()):
            return True
    return False


def test_batches_and_transforms(cub_root):
    dm = make(cub_root, eval_batch_size=6)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (6, 3, 224, 224) and yv.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(next(iter(dm.test_dataloader()))[0], xv)
    # evaluation: square resize to 256 then centre crop 224, so a 256x256 input is cropped, not resized
    image = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    cropped = dm.val_set.transform(image)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(cropped, (image[:, 16:240, 16:240].float() / 255 - mean) / std)
    # training: a random 224 crop of the square resize (or its mirror image)
    torch.manual_seed(0)
    out = ((dm.train_set.transform(image) * std + mean) * 255).round()
    assert is_crop_or_mirror(out, image.float(), 224)


def test_download_fetches_the_official_archive(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, md5))
        write_cub(Path(download_root), num_classes=3)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    dm = Cub200DataModule(tmp_path, download=True, num_classes=3, num_workers=0)
    dm.prepare_data()
    dm.prepare_data()
    assert calls == [(CUB200_URL, CUB200_MD5)]
    dm.setup()
    assert len(dm.train_set) == 6


@pytest.mark.parametrize("exists", [False, True], ids=["missing-root", "empty-root"])
def test_missing_data_names_layout_and_download(tmp_path, exists):
    root = tmp_path / "nowhere"
    if exists:
        root.mkdir()
    with pytest.raises(DatasetError, match=r"CUB_200_2011/images/(.|\n)*data\.download=true"):
        make(root)


def test_missing_metadata_file_is_named(tmp_path, cub_root):
    folder = copy_tree(cub_root, tmp_path)
    (folder / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match=r"CUB_200_2011/train_test_split.txt is missing"):
        make(tmp_path)


def rewrite(path: Path, edit) -> None:
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("train_test_split.txt", lambda lines: lines[:-1], "images.txt lists 12 images but train_test_split.txt 11"),
        ("image_class_labels.txt", lambda lines: [*lines[:-1], "12 4"], r"labels must be 1\.\.3; image 12 has '4'"),
        ("image_class_labels.txt", lambda lines: [*lines[:-1], "12 0"], r"labels must be 1\.\.3"),
        ("train_test_split.txt", lambda lines: [*lines[:-1], "12 2"], "flags must be 0 or 1"),
        ("classes.txt", lambda lines: lines[:-1], r"lists 2 classes; expected ids 1\.\.3"),
        ("images.txt", lambda lines: [*lines, "12 again.jpg"], "images.txt:13: id 12 appears twice"),
        ("images.txt", lambda lines: ["one 001.Bird_1/x.jpg", *lines[1:]], r"images.txt:1: expected '<id> <value>'"),
    ],
)
def test_inconsistent_metadata_is_an_error(tmp_path, cub_root, file, edit, message):
    folder = copy_tree(cub_root, tmp_path)
    rewrite(folder / file, edit)
    with pytest.raises(DatasetError, match=message):
        make(tmp_path)


def test_missing_image_is_an_error(tmp_path, cub_root):
    folder = copy_tree(cub_root, tmp_path)
    victim = next((folder / "images" / "002.Bird_2").iterdir())
    victim.unlink()
    with pytest.raises(DatasetError, match=f"1 images listed in images.txt are missing, e.g. {victim}"):
        make(tmp_path)


def test_corrupt_image_names_its_path_from_the_worker(tmp_path, cub_root):
    folder = copy_tree(cub_root, tmp_path)
    victim = sorted((folder / "images" / "001.Bird_1").iterdir())[3]  # a test image
    victim.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    dm = make(tmp_path, num_workers=1, eval_batch_size=6, persistent_workers=False)
    with pytest.raises(DatasetError, match=f"cannot read image {victim}"):
        next(iter(dm.val_dataloader()))
