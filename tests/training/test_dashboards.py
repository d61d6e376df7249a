"""What the dashboards show, read back from the files the loggers wrote: per-scale terms and region maps."""

from __future__ import annotations

import math

import pytest
from helpers.app import TINY, compose_config
from helpers.wandb_records import history
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdd_lightning.cli.train import train

REGION_MAPS = (
    "callbacks.region_maps={_target_: sdd_lightning.training.callbacks.RegionMaps, every_n_epochs: 1, num_images: 2}"
)
RUN = [*TINY, "distill=sd_kd", "teacher.arch=small_cnn", "teacher.allow_random=true", "epochs=2", REGION_MAPS]
PER_SCALE = [
    "train/loss_kd_scale1",
    "train/loss_kd_scale2",
    "train/loss_kd_scale4",
    "train/complementary_fraction_scale2",
    "train/complementary_fraction_scale4",
    "val/local_acc1_scale1",
    "val/local_acc1_scale2",
    "val/local_acc1_scale4",
    "teacher/local_acc1_scale2",
    "teacher/local_acc1_scale4",
]


def test_tensorboard_holds_the_per_scale_scalars_and_the_region_maps(tmp_path):
    train(compose_config([*RUN, "logger=[tensorboard]"], tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in PER_SCALE:
        assert tag in scalars, tag
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), tag  # one per epoch
    for tag in ("train/complementary_fraction_scale2", "val/local_acc1_scale4"):
        assert all(0 <= e.value <= 1 for e in events.Scalars(tag))
    images = events.Images("region_maps")
    assert len(images) == 2 and images[0].width > 300 and images[0].height > 300


def test_an_offline_wandb_run_holds_the_per_scale_scalars_and_the_region_maps(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(compose_config([*RUN, "logger=[wandb]"], tmp_path))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = history(next(run_dir.glob("run-*.wandb")))
    logged = {key for row in rows for key in row}
    for tag in PER_SCALE:
        assert tag in logged, tag
    teacher = [row["teacher/local_acc1_scale2"] for row in rows if "teacher/local_acc1_scale2" in row]
    assert len(set(teacher)) == 1  # the frozen teacher is measured once
    images = [row["region_maps/filenames"] for row in rows if "region_maps/filenames" in row]
    assert len(images) == 2
    picture = Image.open(run_dir / "files" / images[-1][0])
    assert picture.width > 300 and picture.height > 300


def test_without_wandb_or_tensorboard_the_region_maps_are_pngs_in_the_run_folder(tmp_path):
    train(compose_config([*RUN, "logger=[csv]"], tmp_path))
    pictures = sorted((tmp_path / "region_maps").glob("*.png"))
    assert [p.name for p in pictures] == ["epoch001.png", "epoch002.png"]
    with Image.open(pictures[0]) as picture:
        assert picture.width > 300 and picture.height > 300


def test_region_maps_are_off_unless_asked(tmp_path):
    train(
        compose_config(
            [*TINY, "distill=sd_kd", "teacher.arch=small_cnn", "teacher.allow_random=true", "epochs=1"], tmp_path
        )
    )
    assert not (tmp_path / "region_maps").exists()


@pytest.mark.parametrize("bad", [{"every_n_epochs": -1}, {"num_images": 0}])
def test_bad_region_map_settings_are_refused(bad):
    from sdd_lightning.training.callbacks import RegionMaps

    with pytest.raises(ValueError, match=r"every_n_epochs|num_images"):
        RegionMaps(**bad)
