"""Cifar100DataModule: the pickle reader, both training pipelines, the GPU-side augmentation, errors."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from helpers.fixtures import cifar_split_dict, write_cifar100, write_pickle
from helpers.training import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler
from torchvision.datasets import utils as tv_utils

from sdd_lightning.data import Cifar100DataModule, DeviceResidentLoader, random_crop_flip
from sdd_lightning.data.cifar import CIFAR100_MD5, CIFAR100_URL
from sdd_lightning.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from sdd_lightning.errors import DatasetError

REAL_ROOT = Path(os.environ.get("SDD_CIFAR100_ROOT", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, train_per_class=2, test_per_class=1)
    return root


def make(root, **kwargs) -> Cifar100DataModule:
    kwargs = {"batch_size": 16, "num_workers": 0} | kwargs
    dm = Cifar100DataModule(root, **kwargs)
    dm.setup("fit")
    return dm


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    return ((x * std + mean) * 255).round()


# --- the standard pipeline ---------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", [False, True], ids=["parent-root", "cifar-100-python-root"])
def test_sizes_labels_and_class_names(cifar_root, subfolder):
    dm = make(cifar_root / "cifar-100-python" if subfolder else cifar_root)
    assert dm.num_classes == 100 and len(dm.class_names) == 100
    assert len(dm.train_set) == 200 and len(dm.val_set) == 100
    assert torch.equal(dm.train_data[1].bincount(minlength=100), torch.full((100,), 2))
    assert dm.train_data[0].dtype == torch.uint8 and dm.train_data[0].shape == (200, 3, 32, 32)


def test_batches_and_loaders(cifar_root):
    dm = make(cifar_root, eval_batch_size=40)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    # training: a DistributedSampler for this rank, which Lightning keeps under DDP; evaluation: plain order,
    # which Lightning shards under DDP
    assert isinstance(train, DataLoader) and isinstance(train.sampler, DistributedSampler)
    assert (train.sampler.rank, train.sampler.num_replicas, len(train)) == (0, 1, 13)
    assert isinstance(val.sampler, SequentialSampler) and isinstance(test.sampler, SequentialSampler)
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(val))
    assert xv.shape == (40, 3, 32, 32) and yv.min() >= 0 and yv.max() < 100
    assert torch.equal(next(iter(test))[0], xv)


def test_eval_transform_is_normalisation_only(cifar_root):
    dm = make(cifar_root)
    x, _ = dm.val_set[3]
    assert torch.equal(unnormalize(x), dm.val_data[0][3].float())
    # each channel is normalised with the CIFAR-100 statistics
    expected = (dm.val_data[0][3].float() / 255 - torch.tensor(CIFAR100_MEAN).view(3, 1, 1)) / torch.tensor(
        CIFAR100_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(x, expected)


def crop_flip_candidates(image: torch.Tensor, padding: int = 4) -> list[torch.Tensor]:
    padded = nn.functional.pad(image.float(), (padding,) * 4)
    size = image.shape[-1]
    crops = [padded[:, i : i + size, j : j + size] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_train_transform_is_a_padded_crop_or_its_flip(cifar_root):
    dm = make(cifar_root)
    torch.manual_seed(0)
    for index in range(8):
        x, _ = dm.train_set[index]
        restored = unnormalize(x)
        assert any(torch.equal(restored, c) for c in crop_flip_candidates(dm.train_data[0][index]))


def test_no_augment_trains_on_plain_images(cifar_root):
    dm = make(cifar_root, augment=False)
    assert torch.equal(unnormalize(dm.train_set[0][0]), dm.train_data[0][0].float())


def test_worker_pipeline_is_deterministic_given_seed(cifar_root):
    def first_batch(seed):
        dm = make(cifar_root, num_workers=2, seed=seed, persistent_workers=False)
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_dataloader_before_setup_is_an_error(cifar_root):
    with pytest.raises(RuntimeError, match="setup"):
        Cifar100DataModule(cifar_root).train_dataloader()


# --- GPU-side augmentation and the device-resident pipeline -----------------------------------------


def position_images(batch: int, size: int = 32) -> torch.Tensor:
    """Images whose every pixel encodes its position (row * 100 + col + 1); the padding reads 0."""
    grid = torch.arange(size)[:, None] * 100 + torch.arange(size)[None, :] + 1
    return grid.float().expand(batch, 3, size, size).clone()


def test_random_crop_flip_crops_within_padding_and_flips_half():
    padding, batch = 4, 4000
    out = random_crop_flip(position_images(batch), padding, torch.Generator().manual_seed(0))
    assert out.shape == (batch, 3, 32, 32)
    # Read each image's offset and flip from two pixels near the centre, always inside the image.
    value = out[:, 0, 16, 16].long()
    flipped = out[:, 0, 16, 15] > out[:, 0, 16, 16]  # columns decrease along a flipped row
    row_offset = (value - 1) // 100 - 16 + padding  # crop row 16 is padded row 16 + dy
    column = (value - 1) % 100 + padding  # padded column of crop column 16: dx + 16, or dx + 15 if flipped
    col_offset = column - torch.where(flipped, 15, 16)
    assert row_offset.min() >= 0 and row_offset.max() <= 2 * padding
    assert col_offset.min() >= 0 and col_offset.max() <= 2 * padding
    assert set(row_offset.tolist()) == set(range(2 * padding + 1))  # every offset is drawn
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    # Every output is exactly the crop of the zero-padded image at that offset (then the flip).
    padded = nn.functional.pad(position_images(1)[0], (padding,) * 4)
    for k in range(20):
        crop = padded[:, row_offset[k] : row_offset[k] + 32, col_offset[k] : col_offset[k] + 32]
        assert torch.equal(out[k], crop.flip(-1) if flipped[k] else crop)


def test_random_crop_flip_is_reproducible_and_dtype_preserving():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(images, 4, torch.Generator().manual_seed(3))
    b = random_crop_flip(images, 4, torch.Generator().manual_seed(3))
    c = random_crop_flip(images, 4, torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_crop_flip(images, 0, flip=False), images)


def test_device_resident_normalisation_matches_standard_path(cifar_root):
    standard = make(cifar_root, eval_batch_size=50)
    resident = make(cifar_root, eval_batch_size=50, device_resident=True)
    loader = resident.val_dataloader()
    assert isinstance(loader, DeviceResidentLoader) and len(loader) == 2
    for (xs, ys), (xr, yr) in zip(standard.val_dataloader(), loader, strict=True):
        assert xr.dtype == torch.float32 and yr.dtype == torch.int64
        assert torch.equal(ys, yr)
        torch.testing.assert_close(xr, xs, rtol=0, atol=1e-6)


def test_device_resident_training_batches(cifar_root):
    dm = make(cifar_root, device_resident=True, seed=5)
    loader = dm.train_dataloader()
    assert len(loader) == 13  # ceil(200 / 16)
    batches = list(loader)
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, dm.train_data[1].sort().values)  # each image once per epoch
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the images are crops/flips of the stored ones
    order = list(DeviceResidentLoader(*dm.train_data, 16, mean=dm.mean, std=dm.std, shuffle=True, seed=5).sampler)
    for k in range(4):
        restored = unnormalize(x[k])
        assert any(torch.equal(restored, c) for c in crop_flip_candidates(dm.train_data[0][order[k]]))
    # deterministic given seed and epoch; a new epoch draws a new order
    again = make(cifar_root, device_resident=True, seed=5).train_dataloader()
    assert torch.equal(next(iter(again))[0], x)
    # a complete pass moves on to the next epoch (as the standard loader does); set_epoch chooses one
    assert loader.sampler.epoch == 1 and not torch.equal(next(iter(loader))[1], y)
    loader.sampler.set_epoch(0)
    assert torch.equal(next(iter(loader))[0], x)
    assert torch.equal(next(iter(loader))[0], x)  # a partial pass does not move on


def test_device_resident_shards_are_disjoint():
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    labels = torch.arange(10)
    loaders = [
        DeviceResidentLoader(images, labels, 3, mean=(0,) * 3, std=(1,) * 3, shuffle=True, rank=rank, world_size=2)
        for rank in (0, 1)
    ]
    shards = [torch.cat([y for _, y in loader]) for loader in loaders]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    # an odd count is padded to equal shards, as Lightning's DistributedSampler does
    odd = [
        DeviceResidentLoader(images[:9], labels[:9], 3, mean=(0,) * 3, std=(1,) * 3, rank=r, world_size=2)
        for r in (0, 1)
    ]
    assert [len(loader.sampler) for loader in odd] == [5, 5]
    assert set(torch.cat([y for loader in odd for _, y in loader]).tolist()) == set(range(9))


def test_device_resident_loader_takes_rank_and_device_from_the_trainer(cifar_root):
    dm = make(cifar_root, device_resident=True)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    loader = dm.train_dataloader()
    assert (loader.sampler.rank, loader.sampler.num_replicas, len(loader.sampler)) == (1, 2, 100)
    assert loader.device == torch.device("cpu") and dm.val_dataloader().sampler.rank == 1


class _TinyClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
        self.seen: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        self.seen.append((self.current_epoch, y))
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_device_resident_under_lightning_trainer(cifar_root):
    dm = Cifar100DataModule(cifar_root, batch_size=16, device_resident=True, seed=0)
    model = _TinyClassifier()
    trainer = quiet_trainer(None, devices=1, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert [epoch for epoch, _ in model.seen] == [0, 0, 1, 1]
    # Lightning set the epoch of the loader's sampler: epoch 1's order is the sampler's order for epoch 1
    sampler = trainer.train_dataloader.sampler
    for epoch, first_batch in ((0, 0), (1, 2)):
        sampler.set_epoch(epoch)
        expected = dm.train_data[1][list(sampler)[:16]]
        assert torch.equal(model.seen[first_batch][1], expected), f"epoch {epoch} did not get its own order"
    assert not torch.equal(model.seen[0][1], model.seen[2][1])


# --- download ----------------------------------------------------------------------------------------


def test_download_fetches_the_official_archive(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, md5))
        write_cifar100(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    dm = Cifar100DataModule(tmp_path / "data", download=True, num_workers=0)
    dm.prepare_data()
    dm.prepare_data()  # present now: nothing to do
    assert calls == [(CIFAR100_URL, CIFAR100_MD5)]
    dm.setup()
    assert len(dm.train_set) == 200


def test_existing_copy_is_not_md5_checked(cifar_root, monkeypatch):
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", pytest.fail)
    dm = Cifar100DataModule(cifar_root, download=True, num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert len(dm.val_set) == 100


def test_download_with_wrong_md5_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(tv_utils, "_urlretrieve", lambda url, path, *a, **k: Path(path).write_bytes(b"not a tarball"))
    dm = Cifar100DataModule(tmp_path, download=True)
    with pytest.raises(DatasetError, match="md5"):
        dm.prepare_data()


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [False, True], ids=["missing-root", "empty-root"])
def test_missing_data_names_layout_and_download(tmp_path, exists):
    root = tmp_path / "nowhere"
    if exists:
        root.mkdir()
    with pytest.raises(DatasetError, match=r"cifar-100-python/train, test, meta(.|\n)*data\.download=true"):
        make(root)


def test_download_set_but_not_prepared(tmp_path):
    with pytest.raises(DatasetError, match="prepare_data"):
        make(tmp_path, download=True)


def corrupted_copy(source: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes((source / "cifar-100-python" / name).read_bytes())
    return folder


def test_truncated_pickle_names_the_file(cifar_root, tmp_path):
    folder = corrupted_copy(cifar_root, tmp_path)
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cifar-100-python/train is truncated or corrupt"):
        make(tmp_path)


def test_missing_meta_names_the_file(cifar_root, tmp_path):
    folder = corrupted_copy(cifar_root, tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(DatasetError, match=r"cifar-100-python/meta is missing"):
        make(tmp_path)


def test_pickle_with_foreign_objects_is_refused(cifar_root, tmp_path):
    folder = corrupted_copy(cifar_root, tmp_path)
    write_pickle(folder / "test", {"data": os.getcwd, "fine_labels": []})  # a callable global
    with pytest.raises(DatasetError, match="test is truncated or corrupt"):
        make(tmp_path)


@pytest.mark.parametrize(
    ("labels", "rows", "message"),
    [
        ([0, 1, 100], 3, r"fine labels in \[0, 100\]"),
        ([0, -1, 5], 3, r"fine labels in \[-1, 5\]"),
        ([0, 1, 2], 4, "4 image rows but 3 fine labels"),
    ],
)
def test_inconsistent_split_is_an_error(cifar_root, tmp_path, labels, rows, message):
    folder = corrupted_copy(cifar_root, tmp_path)
    content = cifar_split_dict(np.array(labels), "test", np.random.default_rng(0))
    content["data"] = np.zeros((rows, 3072), dtype=np.uint8)
    write_pickle(folder / "test", content)
    with pytest.raises(DatasetError, match=message):
        make(tmp_path)


def test_wrong_data_shape_is_an_error(cifar_root, tmp_path):
    folder = corrupted_copy(cifar_root, tmp_path)
    content = cifar_split_dict(np.array([0, 1]), "test", np.random.default_rng(0))
    content["data"] = np.zeros((2, 1024), dtype=np.uint8)
    write_pickle(folder / "test", content)
    with pytest.raises(DatasetError, match=r"uint8 array \(N, 3072\)"):
        make(tmp_path)


def test_meta_label_name_count_is_checked(cifar_root, tmp_path):
    folder = corrupted_copy(cifar_root, tmp_path)
    write_pickle(folder / "meta", {"fine_label_names": ["a", "b"], "coarse_label_names": []})
    with pytest.raises(DatasetError, match="names 2 fine classes"):
        make(tmp_path)


# --- the real data set -----------------------------------------------------------------------------------


@pytest.mark.skipif(not (REAL_ROOT / "cifar-100-python" / "train").is_file(), reason="real CIFAR-100 not present")
def test_real_cifar100():
    dm = Cifar100DataModule(REAL_ROOT, num_workers=0)
    dm.setup()
    images, labels = dm.train_data
    assert images.shape == (50_000, 3, 32, 32) and dm.val_data[0].shape == (10_000, 3, 32, 32)
    assert torch.equal(labels.bincount(minlength=100), torch.full((100,), 500))
    assert torch.equal(dm.val_data[1].bincount(minlength=100), torch.full((100,), 100))
    values = torch.arange(256, dtype=torch.float64) / 255
    for c in range(3):
        counts = torch.bincount(images[:, c].flatten(), minlength=256).double()
        mean = (counts * values).sum() / counts.sum()
        std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
        assert abs(mean.item() - CIFAR100_MEAN[c]) < 1e-3 and abs(std.item() - CIFAR100_STD[c]) < 1e-3
    assert dm.class_names[:2] == ["apple", "aquarium_fish"]


def _one_image_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` copies of one asymmetric 8x8 image: any difference between outputs is the augmentation's."""
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(1, 3, 8, 8)
    return image.repeat(n, 1, 1, 1), torch.zeros(n, dtype=torch.long)


def _augmented(images, labels, **kwargs) -> list[torch.Tensor]:
    loader = DeviceResidentLoader(images, labels, 4, mean=(0,) * 3, std=(1,) * 3, augment=True, **kwargs)
    return [x for x, _ in loader]


def test_device_resident_defaults_keep_the_stored_order_and_the_last_short_batch():
    images, labels = torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10)
    loader = DeviceResidentLoader(images, labels, 4, mean=(0,) * 3, std=(1,) * 3)
    assert len(loader) == 3 and torch.equal(torch.cat([y for _, y in loader]), labels)
    dropping = DeviceResidentLoader(images, labels, 4, mean=(0,) * 3, std=(1,) * 3, drop_last=True)
    assert len(dropping) == 2 and [len(y) for _, y in dropping] == [4, 4]


def test_device_resident_augmentation_differs_between_batches_ranks_and_seeds():
    images, labels = _one_image_set(16)
    batches = _augmented(images, labels)
    assert not torch.equal(batches[0], batches[1])  # each batch draws its own crops and flips
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(batches, 2))
    assert torch.equal(torch.cat(batches), torch.cat(_augmented(images, labels)))  # and the same ones again
    ranks = [_augmented(images, labels, rank=r, world_size=2) for r in (0, 1)]
    assert not torch.equal(ranks[0][0], ranks[1][0])  # two processes do not draw alike
    assert not torch.equal(batches[0], _augmented(images, labels, seed=1)[0])


def test_device_resident_defaults_are_unaugmented_seed_0_and_pad_by_4_when_augmenting():
    images, labels = _one_image_set(8)
    plain = torch.cat([x for x, _ in DeviceResidentLoader(images, labels, 4, mean=(0,) * 3, std=(1,) * 3)])
    torch.testing.assert_close(plain, images.float() / 255)
    crops = torch.cat(_augmented(images, labels))
    torch.testing.assert_close(crops, torch.cat(_augmented(images, labels, seed=0, padding=4)))
    assert not torch.equal(crops, torch.cat(_augmented(images, labels, padding=5)))


@pytest.mark.parametrize(
    ("images", "labels", "batch", "message"),
    [
        (
            torch.zeros(4, 3, 8, 8),
            torch.zeros(4),
            2,
            "images must be uint8 (N, C, H, W), got torch.float32 (4, 3, 8, 8)",
        ),
        (
            torch.zeros(3, 8, 8, dtype=torch.uint8),
            torch.zeros(3),
            2,
            "images must be uint8 (N, C, H, W), got torch.uint8 (3, 8, 8)",
        ),
        (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(5), 2, "labels must have shape (4,), got (5,)"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4), 0, "batch_size must be >= 1, got 0"),
    ],
)
def test_device_resident_loader_refuses_bad_inputs_by_name(images, labels, batch, message):
    with pytest.raises(ValueError) as error:
        DeviceResidentLoader(images, labels, batch, mean=(0,) * 3, std=(1,) * 3)
    assert str(error.value) == message


def test_device_resident_batches_of_one_are_allowed():
    images, labels = _one_image_set(3)
    assert [len(y) for _, y in DeviceResidentLoader(images, labels, 1, mean=(0,) * 3, std=(1,) * 3)] == [1, 1, 1]


def test_random_crop_flip_pads_by_4_by_default_and_refuses_bad_inputs_by_name():
    images, _ = _one_image_set(16)
    draw = lambda **kw: random_crop_flip(images, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    assert torch.equal(draw(), draw(padding=4)) and not torch.equal(draw(), draw(padding=5))
    with pytest.raises(ValueError) as error:
        random_crop_flip(images[0])
    assert str(error.value) == "random_crop_flip expects a batch (B, C, H, W), got shape (3, 8, 8)"
    with pytest.raises(ValueError) as error:
        random_crop_flip(images, padding=-1)
    assert str(error.value) == "padding must be >= 0, got -1"


def test_device_resident_order_depends_on_the_seed():
    images, labels = torch.zeros(32, 3, 4, 4, dtype=torch.uint8), torch.arange(32)
    orders = [
        list(DeviceResidentLoader(images, labels, 8, mean=(0,) * 3, std=(1,) * 3, shuffle=True, seed=s).sampler)
        for s in (0, 5, 5)
    ]
    assert orders[1] == orders[2] and orders[0] != orders[1]


def test_random_crop_flip_pads_with_the_fill_value():
    images = torch.zeros(64, 1, 2, 2, dtype=torch.uint8)
    crops = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0), fill=7)
    assert set(crops.unique().tolist()) == {0, 7}  # some crops reach into the padding, which holds the fill
