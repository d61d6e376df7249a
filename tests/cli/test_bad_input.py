"""Every bad value a user can give is refused before training, in one message that names the override to fix."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.app import TINY, compose_config, run_app

from sdd_lightning.cli.train import train
from sdd_lightning.errors import ConfigError
from sdd_lightning.models import build_model

TEACHER = ["distill=sd_kd", "teacher.arch=small_cnn", "teacher.allow_random=true"]


def _refused(overrides: list[str], tmp_path) -> str:
    with pytest.raises(ConfigError) as error:
        train(compose_config([*TINY, *overrides], tmp_path))
    assert not (tmp_path / "checkpoints").exists(), "nothing may be trained before a bad value is refused"
    return str(error.value)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("distill.complementary_weight=-1", "distill.complementary_weight=-1"),
        ("distill.consistent_weight=nan", "distill.consistent_weight=nan"),
        ("distill.ce_weight=-0.5", "distill.ce_weight=-0.5"),
        ("distill.kd_weight=-1", "distill.kd_weight=-1"),
        ("distill.warmup_epochs=-3", "distill.warmup_epochs=-3"),
        ("distill.loss.temperature=0", "distill.loss.temperature=0"),
        ("distill.scales=[1,0]", "distill.scales"),
        ("distill.scales=[2,4]", "distill.scales"),
        ("distill.pooling=spp", "distill.pooling=spp"),
        ("distill.consistency=majority", "distill.consistency=majority"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1"),
        ("optimizer.momentum=-1", "optimizer.momentum=-1"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("epochs=0", "epochs=0"),
    ],
)
def test_a_bad_number_is_refused_naming_its_override(override, named, tmp_path):
    assert named in _refused([*TEACHER, override], tmp_path)


def test_dkd_and_nkd_settings_are_checked_by_their_loss(tmp_path):
    assert "distill.loss.beta=-2" in _refused(["distill=dkd", *TEACHER[1:], "distill.loss.beta=-2"], tmp_path)
    assert "distill.loss.gamma=-1" in _refused(["distill=nkd", *TEACHER[1:], "distill.loss.gamma=-1"], tmp_path)


def test_both_weights_zero_is_refused(tmp_path):
    message = _refused([*TEACHER, "distill.ce_weight=0", "distill.kd_weight=0"], tmp_path)
    assert "ce_weight" in message and "kd_weight" in message


def test_an_unknown_architecture_suggests_the_close_names(tmp_path):
    message = _refused(["student.arch=resnet8x"], tmp_path)
    assert "student.arch='resnet8x'" in message and "Did you mean 'resnet8x4'" in message


def test_a_missing_teacher_says_how_to_get_one(tmp_path):
    message = _refused(["distill=kd", "teacher.arch=small_cnn"], tmp_path)
    assert "teacher.checkpoint" in message and "SDD_TEACHER_DIR" in message and "experiment=" in message


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "empty"),
        (b"\x00\x13\x7f" * 1000, "not a PyTorch checkpoint"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_an_unreadable_teacher_file_is_called_unreadable_and_never_loaded_unsafely(content, said, tmp_path):
    path = tmp_path / "teacher.pth"
    if content == "truncated":
        torch.save(build_model("small_cnn", 16).state_dict(), path)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    else:
        path.write_bytes(content)
    message = _refused(["distill=kd", "teacher.arch=small_cnn", f"teacher.checkpoint={path}"], tmp_path / "run")
    assert said in message and "teacher.checkpoint" in message
    assert "weights_only=False" not in message and "Fix: teacher.arch" not in message


def test_a_teacher_for_another_class_count_says_the_class_count_differs(tmp_path):
    path = tmp_path / "teacher10.pth"
    torch.save(build_model("small_cnn", 10).state_dict(), path)
    message = _refused(["distill=kd", "teacher.arch=small_cnn", f"teacher.checkpoint={path}"], tmp_path / "run")
    assert "class count differs" in message and "10 classes" in message


@pytest.mark.parametrize(
    ("override", "suggested"),
    [
        ("pair=cifar100/res32x4_shv", "'cifar100/res32x4_shv1'"),
        ("experiment=cifar100/teacher_resnet32", "'cifar100/teacher_resnet32x4'"),
        ("distill=kd,sdkd", "'sd_kd'"),
    ],
)
def test_an_unknown_setting_name_suggests_the_close_ones(override, suggested):
    result = run_app([override])
    assert result.returncode == 2
    assert "Did you mean" in result.stderr and suggested in result.stderr
    assert "Traceback" not in result.stderr
