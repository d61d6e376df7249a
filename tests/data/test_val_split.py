"""A validation set held out of the training split (data.val_split): disjoint, stratified, stable; test once."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.app import CONF_DIR, TINY, compose_config, read_results
from helpers.fixtures import write_cub, write_image_folder
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from torch.utils.data import Subset

from sdd_lightning.cli.sources import split_loader
from sdd_lightning.cli.train import train
from sdd_lightning.data import (
    Cifar100DataModule,
    Cub200DataModule,
    ImageNetDataModule,
    SyntheticDataModule,
    stratified_holdout,
)
from sdd_lightning.data.cifar import read_cifar100_split
from sdd_lightning.data.synthetic import SHAPES_MEAN, SHAPES_STD
from sdd_lightning.errors import ConfigError

REAL_ROOT = Path(os.environ.get("SDD_CIFAR100_ROOT", Path(__file__).resolve().parents[3] / "shared" / "data"))
BAD_VALUES = [0, -5, 0.0, 1.0, 1.5, -0.2, True, "5000", [100]]


# --- the split itself ----------------------------------------------------------------------------------


def test_holdout_is_disjoint_complete_stratified_and_stable():
    labels = torch.arange(1000) % 10  # 100 images per class
    train_idx, val_idx = stratified_holdout(labels, 50, seed=0)
    assert len(val_idx) == 50 and len(train_idx) == 950
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(1000))  # disjoint and complete
    assert torch.equal(labels[val_idx].bincount(minlength=10), torch.full((10,), 5))  # 5 per class
    again_train, again_val = stratified_holdout(labels, 50, seed=0)
    assert torch.equal(again_val, val_idx) and torch.equal(again_train, train_idx)
    assert not torch.equal(stratified_holdout(labels, 50, seed=1)[1], val_idx)
    # a fraction is that share of the images; a larger split holds out a superset of a smaller one
    _, tenth = stratified_holdout(labels, 0.1, seed=0)
    assert len(tenth) == 100 and set(val_idx.tolist()) <= set(tenth.tolist())


def test_holdout_of_unbalanced_classes_is_proportional_and_exact():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 97 + [3] * 3)
    for size in (7, 100, 333):
        _, val_idx = stratified_holdout(labels, size, seed=4)
        counts = labels[val_idx].bincount(minlength=4)
        assert int(counts.sum()) == size
        expected = torch.tensor([600, 300, 97, 3]) * size / 1000
        assert ((counts - expected).abs() < 1).all(), (size, counts.tolist())


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_bad_val_split_is_refused_naming_it(value):
    with pytest.raises(ValueError, match="val_split"):
        SyntheticDataModule(num_train=64, val_split=value)
    with pytest.raises(ValueError, match="val_split"):
        stratified_holdout(torch.arange(64) % 4, value)


def test_val_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(ValueError, match="val_split=64 holds out 64 of the 64"):
        SyntheticDataModule(num_train=64, val_split=64)
    with pytest.raises(ValueError, match="val_split_seed"):
        SyntheticDataModule(num_train=64, val_split=8, val_split_seed=-1)


def test_bad_val_split_from_the_command_line_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.val_split"):
        train(compose_config([*TINY, "epochs=1", "data.val_split=1.5"], tmp_path))


# --- the data modules ----------------------------------------------------------------------------------


def synthetic(**kwargs) -> SyntheticDataModule:
    kwargs = {"num_classes": 8, "num_train": 160, "num_val": 48, "batch_size": 16, "eval_batch_size": 20} | kwargs
    return SyntheticDataModule(**kwargs)


@pytest.mark.parametrize("device_resident", [False, True], ids=["standard", "device-resident"])
def test_synthetic_validation_is_held_out_of_training_and_unaugmented(device_resident):
    full = synthetic(device_resident=device_resident)
    full.setup()
    dm = synthetic(device_resident=device_resident, val_split=40, seed=3)
    dm.setup("fit")
    assert dm.test_data is None and dm.test_set is None  # fitting never reads the test split
    train_idx, val_idx = stratified_holdout(full.train_data[1], 40, seed=0)
    assert torch.equal(dm.val_data[0], full.train_data[0][val_idx])
    assert torch.equal(dm.train_data[0], full.train_data[0][train_idx])
    assert torch.equal(dm.val_data[1].bincount(minlength=8), torch.full((8,), 5))
    # validation batches are the held-out images, normalised only, in their stored order
    mean, std = torch.tensor(SHAPES_MEAN).view(3, 1, 1), torch.tensor(SHAPES_STD).view(3, 1, 1)
    images = torch.cat([x for x, _ in dm.val_dataloader()])
    torch.testing.assert_close(images, (dm.val_data[0] / 255 - mean) / std, rtol=0, atol=1e-6)
    assert len(dm.train_dataloader()) == 120 // 16 + 1
    with pytest.raises(RuntimeError, match="no test set"):
        dm.test_dataloader()
    dm.setup("test")
    assert torch.equal(dm.test_data[0], full.test_data[0])
    assert torch.equal(torch.cat([y for _, y in dm.test_dataloader()]), full.test_data[1])
    # the split depends on val_split_seed alone, not on the run's seed
    other_run = synthetic(device_resident=device_resident, val_split=40, seed=4)
    other_run.setup("validate")
    assert torch.equal(other_run.val_data[0], dm.val_data[0]) and other_run.train_data is not None


def test_default_protocol_validates_on_the_test_split():
    dm = synthetic(device_resident=False)
    dm.setup("fit")
    assert dm.val_set is dm.test_set and dm.val_data is dm.test_data and len(dm.train_set) == 160


def test_sdd_eval_splits_map_onto_the_held_out_protocol():
    dm = synthetic(device_resident=False, val_split=0.25)
    counts = {split: sum(len(y) for _, y in split_loader(dm, split)) for split in ("val", "test", "train")}
    assert counts == {"val": 40, "test": 48, "train": 120}
    # `train` is evaluated without augmentation: the stored training images, normalised
    first, _ = next(iter(split_loader(dm, "train")))
    mean, std = torch.tensor(SHAPES_MEAN).view(3, 1, 1), torch.tensor(SHAPES_STD).view(3, 1, 1)
    torch.testing.assert_close(first, (dm.train_data[0][: len(first)] / 255 - mean) / std, rtol=0, atol=1e-6)


def _check_file_split(dm, num_train: int, num_held: int, num_test: int) -> None:
    dm.setup("fit")
    assert dm.test_set is None
    assert isinstance(dm.train_set, Subset) and isinstance(dm.val_set, Subset)
    train_idx, val_idx = set(dm.train_set.indices), set(dm.val_set.indices)
    assert not train_idx & val_idx and len(train_idx | val_idx) == num_train and len(val_idx) == num_held
    held_labels = [dm.val_set.dataset.targets[i] for i in sorted(val_idx)]
    assert torch.tensor(held_labels).bincount().tolist() == [num_held // 3] * 3  # stratified: as many per class
    a, b = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(a[0], b[0])  # the evaluation transform: no random crop
    dm.setup("test")
    assert len(dm.test_set) == num_test and len(dm.train_eval_set) == num_train - num_held


def test_cub_validation_is_held_out_of_the_official_training_split(tmp_path):
    write_cub(tmp_path, num_classes=3, per_class=6, train_per_class=4)
    dm = Cub200DataModule(
        tmp_path, num_classes=3, batch_size=3, num_workers=0, crop_size=32, resize_size=40, val_split=3
    )
    _check_file_split(dm, num_train=12, num_held=3, num_test=6)


def test_imagenet_validation_is_held_out_of_train_folder(tmp_path):
    write_image_folder(tmp_path, train_per_class=4, val_per_class=2)
    dm = ImageNetDataModule(
        tmp_path, num_classes=3, batch_size=3, num_workers=0, crop_size=32, resize_size=40, val_split=0.5
    )
    _check_file_split(dm, num_train=12, num_held=6, num_test=6)


@pytest.mark.skipif(not (REAL_ROOT / "cifar-100-python" / "train").is_file(), reason="real CIFAR-100 not present")
def test_real_cifar100_holds_out_50_images_per_class():
    def held_out(**kwargs) -> Cifar100DataModule:
        dm = Cifar100DataModule(REAL_ROOT, num_workers=0, val_split=5000, **kwargs)
        dm.setup("fit")
        return dm

    dm = held_out(seed=0)
    assert dm.test_data is None
    assert dm.val_data[0].shape == (5000, 3, 32, 32) and dm.train_data[0].shape == (45_000, 3, 32, 32)
    assert torch.equal(dm.val_data[1].bincount(minlength=100), torch.full((100,), 50))
    assert torch.equal(dm.train_data[1].bincount(minlength=100), torch.full((100,), 450))
    # disjoint: the two parts are complementary index sets of the training file, and an image found in both
    # is one that the training file holds twice (CIFAR-100 has 14 such pairs)
    full_images, full_labels = read_cifar100_split(REAL_ROOT / "cifar-100-python", "train")
    train_idx, val_idx = stratified_holdout(full_labels, 5000, seed=0)
    assert torch.equal(dm.val_data[0], full_images[val_idx]) and torch.equal(dm.train_data[0], full_images[train_idx])
    copies = Counter(bytes(row) for row in full_images.flatten(1).numpy())
    shared = {bytes(row) for row in dm.train_data[0].flatten(1).numpy()} & {
        bytes(row) for row in dm.val_data[0].flatten(1).numpy()
    }
    assert all(copies[row] == 2 for row in shared)
    assert torch.equal(held_out(seed=1).val_data[0], dm.val_data[0])  # stable, whatever the run's seed
    assert not torch.equal(held_out(val_split_seed=1).val_data[1], dm.val_data[1])
    dm.setup("test")
    assert dm.test_data[0].shape == (10_000, 3, 32, 32)


# --- a run: validation on the held-out images, the test split touched once ------------------------------


def _digests(pixels: torch.Tensor) -> list[str]:
    """One digest per ``uint8`` image."""
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in pixels]


def _fingerprints(images: torch.Tensor) -> list[str]:
    """One digest per image of a normalised batch (its uint8 pixels recovered exactly)."""
    mean, std = torch.tensor(SHAPES_MEAN).view(3, 1, 1), torch.tensor(SHAPES_STD).view(3, 1, 1)
    return _digests(((images.cpu() * std + mean) * 255).round().to(torch.uint8))


class SplitProbe(L.Callback):
    """Records the images of every validation and test batch of a run, and whether fitting loaded the test split."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: dict[str, list] = {"validation": [], "test": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen["test_loaded_during_fit"] = trainer.datamodule.test_data is not None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen["validation"].append([])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["validation"][-1] += _fingerprints(batch[0])

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["test"] += _fingerprints(batch[0])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.write_text(json.dumps(self.seen))


@pytest.mark.parametrize("device_resident", [False, True], ids=["standard", "device-resident"])
def test_a_run_selects_on_held_out_images_and_tests_once(tmp_path, device_resident):
    probe = ["+callbacks.probe._target_=test_val_split.SplitProbe", f"+callbacks.probe.path={tmp_path / 'seen.json'}"]
    overrides = [*TINY, "epochs=2", "data.val_split=32", f"data.device_resident={device_resident}", *probe]
    results = train(compose_config(overrides, tmp_path))
    seen = json.loads((tmp_path / "seen.json").read_text())
    reference = SyntheticDataModule(num_train=256, num_val=128, val_split=32)
    reference.setup()
    held_out, test = _digests(reference.val_data[0]), _digests(reference.test_data[0])
    assert seen["test_loaded_during_fit"] is False
    assert len(seen["validation"]) == 2  # one validation per epoch, each on the held-out images exactly
    assert all(epoch == held_out for epoch in seen["validation"])
    assert not set(held_out) & set(test)
    assert seen["test"] == test  # the test split, every image once, in one pass after fitting
    assert results["test/acc1"] is not None and read_results(tmp_path)["status"] == "finished"


# --- data.root is an override of every data config, also in a sweep -----------------------------------------


def test_data_root_is_a_valid_sweep_override_of_every_data_config():
    parsed = OverridesParser.create().parse_overrides(["data.root=/data/a,/data/b"])
    values = list(parsed[0].sweep_string_iterator())
    for data in [None, *sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))]:
        overrides = ["data.root=/data/a,/data/b"] + ([f"data={data}"] if data else [])
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            sweep = hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN)
            # each job of the sweep is composed as Hydra's basic sweeper composes it
            jobs = [hydra.config_loader.load_sweep_config(sweep, [f"data.root={value}"]) for value in values]
        assert [job.data.root for job in jobs] == ["/data/a", "/data/b"], data
    GlobalHydra.instance().clear()
    assert SyntheticDataModule(root="/data/a").root == Path("/data/a")  # accepted, unused
