"""A teacher is measured before it teaches, and a teacher below what is known of it refuses to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.app import TINY, compose_config, read_results, subprocess_env

from sdd_lightning.builders import expected_teacher_acc1
from sdd_lightning.cli.train import train
from sdd_lightning.errors import TeacherCheckError


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small teacher well above chance (about 28% top-1 on 16 classes), and its measured top-1 (results.json)."""
    run_dir = tmp_path_factory.mktemp("teacher")
    recipe = ["student.arch=small_cnn", "data.num_train=512", "epochs=8", "scheduler=cosine", "optimizer.lr=0.1"]
    train(compose_config([*TINY, *recipe], run_dir))
    return run_dir


def _distil(teacher_ckpt: Path, tmp_path: Path, *extra: str) -> dict:
    overrides = [*TINY, "distill=sd_kd", "teacher.arch=small_cnn", f"teacher.checkpoint={teacher_ckpt}", "epochs=1"]
    return train(compose_config([*overrides, *extra], tmp_path))


def test_the_teacher_is_measured_before_the_first_step(teacher, tmp_path):
    ckpt = teacher / "checkpoints" / "last.ckpt"
    expected = read_results(teacher)["val/acc1"]
    results = _distil(ckpt, tmp_path, f"teacher.expected_acc1={expected}", "trainer.limit_train_batches=1")
    assert results["teacher/acc1"] == pytest.approx(expected, abs=1e-6)  # the same images, the same teacher


def test_a_broken_teacher_is_refused_before_any_training(teacher, tmp_path):
    state = torch.load(teacher / "checkpoints" / "last.ckpt", weights_only=True)
    weights = state["state_dict"]
    classifier = [k for k in weights if k.startswith("model.") and k.endswith("weight") and weights[k].dim() == 2][-1]
    generator = torch.Generator().manual_seed(0)
    for key in (classifier, classifier.replace("weight", "bias")):  # shuffle which row predicts which class
        weights[key] = weights[key][torch.randperm(weights[key].shape[0], generator=generator)]
    broken = tmp_path / "broken.ckpt"
    torch.save(state, broken)
    expected = read_results(teacher)["val/acc1"]
    assert expected > 0.15  # a teacher clearly above chance (1/16), so that a broken one is clearly below it
    with pytest.raises(TeacherCheckError, match=r"scores .*% top-1 .* but .*% is expected"):
        _distil(broken, tmp_path / "run", f"teacher.expected_acc1={expected}")
    assert not list((tmp_path / "run").glob("checkpoints/best-*.ckpt"))  # no epoch was trained
    # the user who means it distils from it anyway
    results = _distil(broken, tmp_path / "anyway", f"teacher.expected_acc1={expected}", "teacher.check=false")
    assert results["status"] == "finished" and results["teacher/acc1"] < expected - 0.01


def test_the_expected_accuracy_comes_from_the_model_card(teacher, tmp_path):
    export = subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.export", str(teacher), "--output-dir", str(tmp_path / "exported")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert export.returncode == 0, export.stderr[-2000:]
    weights = next((tmp_path / "exported").glob("*.safetensors"))
    card = json.loads(weights.with_suffix(".json").read_text())
    cfg = compose_config([*TINY, "distill=kd", "teacher.arch=small_cnn", f"teacher.checkpoint={weights}"])
    assert expected_teacher_acc1(cfg) == pytest.approx(card["accuracy"]["acc1"])
    assert expected_teacher_acc1(compose_config([*TINY, "distill=kd", "teacher.arch=small_cnn"])) is None


def test_a_crd_teacher_file_is_expected_to_score_its_published_accuracy(tmp_path):
    crd = tmp_path / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    cfg = compose_config(["pair=cifar100/res32x4_shv1", "distill=sd_kd", f"teacher.checkpoint={crd}"])
    assert expected_teacher_acc1(cfg) == pytest.approx(0.7942)
    cfg = compose_config(["pair=cifar100/res32x4_shv1", "distill=sd_kd", "teacher.expected_acc1=0.5"])
    assert expected_teacher_acc1(cfg) == 0.5
