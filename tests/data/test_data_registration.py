"""Each data module names itself, and the name is the option of its config ``conf/data/<name>.yaml``."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import sdd_lightning
from sdd_lightning.data import (
    Cifar100DataModule,
    ClassificationDataModule,
    Cub200DataModule,
    ImageNetDataModule,
    InMemoryImageDataModule,
    SyntheticDataModule,
    available_datamodules,
    datamodule_class,
    datamodule_name,
    registry,
)
from sdd_lightning.data.base import ImageFileDataModule

DATA_CONFIGS = sorted((Path(sdd_lightning.__file__).parent / "conf" / "data").glob("*.yaml"))


@contextlib.contextmanager
def restored_registry() -> Iterator[None]:
    """Whatever a test registers is gone again afterwards."""
    saved = dict(registry._DATAMODULES)
    try:
        yield
    finally:
        registry._DATAMODULES.clear()
        registry._DATAMODULES.update(saved)


def _target_class(config: Path) -> type:
    module_name, _, attribute = OmegaConf.load(config)["_target_"].rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def test_the_built_in_data_sets_and_their_names():
    assert available_datamodules() == ["cifar100", "cub200", "imagenet", "synthetic"]
    assert (Cifar100DataModule.name, Cub200DataModule.name, ImageNetDataModule.name, SyntheticDataModule.name) == (
        "cifar100",
        "cub200",
        "imagenet",
        "synthetic",
    )
    for base in (ClassificationDataModule, InMemoryImageDataModule, ImageFileDataModule):
        assert base.name is None  # bases, no data set


@pytest.mark.parametrize("config", DATA_CONFIGS, ids=lambda path: path.stem)
def test_every_data_config_builds_the_class_that_carries_its_name(config):
    cls = _target_class(config)
    assert cls.name == config.stem
    assert datamodule_class(config.stem) is cls
    assert datamodule_name(OmegaConf.load(config)["_target_"]) == config.stem


def test_every_registered_data_module_has_its_config():
    assert available_datamodules() == [config.stem for config in DATA_CONFIGS]


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("sdd_lightning.data.Cifar100DataModule", "cifar100"),
        ("sdd_lightning.data.cub.Cub200DataModule", "cub200"),
        (ImageNetDataModule, "imagenet"),
        ("sdd_lightning.data.InMemoryImageDataModule", None),  # a base, no data set
        ("lightning.LightningDataModule", None),  # not one of ours
        ("sdd_lightning.data.NoSuchDataModule", None),
        ("no_such_package.DataModule", None),
        ("Cifar100DataModule", None),  # not a dotted path
    ],
)
def test_datamodule_name_of_a_target(target, name):
    assert datamodule_name(target) == name


def test_an_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'\. Did you mean 'cifar100'\?.*cub200, imagenet"):
        datamodule_class("cifar10")


def test_a_new_data_module_names_itself_and_leaves_with_the_test():
    with restored_registry():

        class StripesDataModule(InMemoryImageDataModule):
            name = "stripes"

        class NoisierStripes(StripesDataModule):  # carries its parent's name; registers nothing
            pass

        assert datamodule_class("stripes") is StripesDataModule
        assert available_datamodules() == ["cifar100", "cub200", "imagenet", "stripes", "synthetic"]
        assert datamodule_name(NoisierStripes) == "stripes"
    assert "stripes" not in available_datamodules()


def test_a_taken_name_is_refused():
    with restored_registry():
        with pytest.raises(ValueError, match=r"data module name 'cifar100' is already taken by .*Cifar100DataModule"):

            class OtherCifar(InMemoryImageDataModule):
                name = "cifar100"

        assert datamodule_class("cifar100") is Cifar100DataModule


@pytest.mark.parametrize("name", ["", "cifar/100", "CIFAR 100"])
def test_a_name_that_cannot_be_a_config_file_is_refused(name):
    with restored_registry(), pytest.raises(ValueError, match=r"conf/data/<name>\.yaml"):
        type("BadName", (InMemoryImageDataModule,), {"name": name})
