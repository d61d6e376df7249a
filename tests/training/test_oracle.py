"""The project's training step, replayed against the official one (tests/assets/official_step.json).

``tools/record_official_step.py`` ran the official SDD code (its networks, distillers and trainer step) for KD,
SD-KD, DKD, SD-DKD, NKD and SD-NKD on ResNet32x4 -> ResNet8x4 and WRN-40-2 -> VGG8, in float64, from weights and
batches given by the rules of ``oracle_rules.py``, and recorded the recipe values it used, the loss of every step
and checksums of the student after it. Here each setting is composed and built as ``sdd-train`` builds it (the
teacher loaded from a CRD-format checkpoint file, its BatchNorm folded where the CPU trainer folds it), given the
same weights and batches, and stepped with its own ``training_step``, gradient clipping hook and optimiser from
``configure_optimizers``, at the same epoch. Its recipe values, losses and checksums must equal the recorded ones
to 1e-6 (relative). A change that alters a published setting's step fails here.

The teacher is frozen and in eval mode, so its feature maps for a batch are the same in every method of a pair:
the first case of a pair computes them, the others reuse them (checked equal inputs), which keeps the test to
seconds. Everything after the teacher's feature maps (the heads, the losses, the weights, the backward pass,
clipping and the SGD update) runs in every case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
from helpers import oracle_rules as rules
from helpers.training import quiet_trainer

from sdd_lightning.builders import build_module
from sdd_lightning.catalog import compose_setting
from sdd_lightning.method.heads import ScaleDecoupledHead
from sdd_lightning.models import build_model

RECORD = json.loads((Path(__file__).resolve().parents[1] / "assets" / "official_step.json").read_text())
RTOL = 1e-6
LOSS_CLASSES = {"kd": "KDLoss", "dkd": "DKDLoss", "nkd": "NKDLoss"}
CASES = [pytest.param(setting, id=setting.removeprefix("cifar100/")) for setting in RECORD["cases"]]

# float64 convolutions on small batches: a second thread costs more than it gives on a busy machine
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_record_was_made_with_these_rules():
    """A rule changed without recording again would compare different runs."""
    made = RECORD["rules"]
    assert made["version"] == rules.RULE_VERSION
    assert (made["batch_size"], made["image_size"], made["steps"], made["epoch"]) == (
        rules.BATCH_SIZE,
        rules.IMAGE_SIZE,
        rules.STEPS,
        rules.EPOCH,
    )
    assert made["dtype"] == str(rules.DTYPE).removeprefix("torch.") == "float64"
    assert made["label_cells"] == list(rules.CELLS) and made["classifier_gain"] == rules.CLASSIFIER_GAIN
    assert len(RECORD["official"]["commit"]) == 40


@contextmanager
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(rules.DTYPE)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _pair(setting: str) -> str:
    return setting.split("/")[1]


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> Path:
    """The folder of the pairs' teachers: ``<pair>.pth``, written by :func:`build` on first use."""
    return tmp_path_factory.mktemp("teachers")


def write_teacher(path: Path, arch: str) -> None:
    """The pair's teacher, set by the naming rule, saved as a CRD/mdistiller checkpoint (``{"model": ...}``)."""
    if not path.exists():
        with _float64():
            network = build_model(arch, rules.NUM_CLASSES)
        torch.save({"model": rules.state_dict_for(network, "teacher"), "epoch": 240}, path)


class _SharedTeacherPass:
    """The teacher's feature maps of each batch, computed by the first case of a pair and reused by the rest."""

    seen: ClassVar[dict[str, list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def __init__(self, pair: str, forward_features) -> None:
        self.maps = self.seen.setdefault(pair, [])
        self.forward_features = forward_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for images, feature_map in self.maps:
            if images.shape == x.shape and torch.equal(images, x):
                return feature_map.clone()
        feature_map = self.forward_features(x)
        self.maps.append((x.clone(), feature_map.clone()))
        return feature_map


def _bare_trainer(epoch: int) -> L.Trainer:
    """A trainer as Lightning's fit loop is during training epoch ``epoch`` (counted from 0)."""
    trainer = quiet_trainer(max_epochs=None)  # Lightning's default; it never fits
    trainer.fit_loop.epoch_progress.current.completed = epoch
    return trainer


def build(setting: str, teacher_files: Path) -> tuple:
    """The setting's module as ``sdd-train`` builds it, in float64, with the student set by the naming rule."""
    path = teacher_files / f"{_pair(setting)}.pth"
    cfg = compose_setting(setting, extra=[f"teacher.checkpoint={path}", "teacher.check=false"])
    write_teacher(path, cfg.teacher.arch)
    with _float64():
        module = build_module(cfg, rules.NUM_CLASSES)
    rules.set_weights(module.student, "student")
    module.trainer = _bare_trainer(rules.EPOCH - 1)  # the official trainer counts epochs from 1
    assert module.current_epoch + 1 == rules.EPOCH
    module.teacher.forward_features = _SharedTeacherPass(_pair(setting), module.teacher.forward_features)
    return cfg, module


def check_recipe(setting: str, cfg, module, optimizer: torch.optim.Optimizer) -> None:
    """The setting's values are the ones the official code used (recorded by the tool)."""
    recipe = RECORD["cases"][setting]["recipe"]
    loss = module.distillation_loss
    ours = {
        "scales": list(module.head.scales),
        "ce_weight": module.ce_weight,
        "kd_weight": module.kd_weight,
        "warmup_epochs": module.warmup_epochs,
        "warmup_factor": module.distillation_weight() / module.kd_weight,
        "complementary_weight": loss.complementary_weight,
        "loss": {name: loss.base.settings().get(name, value) for name, value in recipe["loss"].items()},
        "lr": optimizer.param_groups[0]["lr"],
        "momentum": optimizer.param_groups[0]["momentum"],
        "weight_decay": optimizer.param_groups[0]["weight_decay"],
        "gradient_clip_norm": cfg.trainer.gradient_clip_val,
    }
    assert ours == recipe, f"{setting}: the composed setting differs from the official run"
    assert type(loss.base).__name__ == LOSS_CLASSES[recipe["loss"]["name"]]
    assert (loss.consistent_weight, loss.consistency.value) == (1.0, "correctness")
    assert cfg.trainer.gradient_clip_algorithm == "norm" and len(optimizer.param_groups) == 1
    assert type(optimizer) is torch.optim.SGD and not optimizer.param_groups[0]["nesterov"]


def one_step(cfg, module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, step: int):
    """One step as Lightning's automatic optimisation runs it: the step, backward, the clipping hook, the update."""
    optimizer.zero_grad()
    loss = module.training_step((x, y), step)
    loss.backward()
    module.configure_gradient_clipping(optimizer, cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm)
    optimizer.step()
    return loss.detach()


def _optimizer(module) -> torch.optim.Optimizer:
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def replay(setting: str, teacher_files) -> list[dict[str, float]]:
    """The setting's first steps through its own module, as Lightning runs them; the figures the tool records."""
    cfg, module = build(setting, teacher_files)
    optimizer = _optimizer(module)
    check_recipe(setting, cfg, module, optimizer)
    assert all(p.dtype == rules.DTYPE for p in [*module.student.parameters(), *module.teacher.parameters()])
    labels = RECORD["labels"][_pair(setting)]
    module.train()
    initial = rules.snapshot(module.student)
    figures = []
    for step in range(rules.STEPS):
        x, y = rules.images(step), torch.tensor(labels[step])
        if step == 0:  # the labels follow from the teacher's predictions: the same teacher as the official one
            with torch.no_grad():
                global_logits, local_logits = ScaleDecoupledHead((1, 2)).logits(*module.teacher_features(x))
            assert rules.labels(step, global_logits, local_logits).tolist() == labels[step]
        module.on_train_epoch_start()  # the parts below are this step's alone
        loss = one_step(cfg, module, optimizer, x, y, step)
        sums = module._train_sums.sums
        figures.append(
            {
                "loss": float(loss),
                "loss_ce": module.ce_weight * float(sums["train/loss_ce"]),
                "loss_kd": module.distillation_weight() * float(sums["train/loss_kd"]),
                **rules.student_checksums(module.student, initial),
            }
        )
    return figures


def _mismatches(ours: list[dict[str, float]], official: list[dict[str, float]]) -> list[str]:
    found = []
    for step, (mine, theirs) in enumerate(zip(ours, official, strict=True)):
        for name, value in theirs.items():
            # the projection's typical size is the norm of the change, however small its value by chance
            scale = theirs["delta_sq"] ** 0.5 if name == "delta_proj" else 0.0
            error = rules.relative_error(mine[name], value, scale)
            if error > RTOL:
                found.append(f"step {step} {name}: ours {mine[name]!r}, official {value!r} (relative {error:.2e})")
    return found


@pytest.mark.parametrize("setting", CASES)
def test_the_training_step_equals_the_official_step(setting, teacher_files):
    official = RECORD["cases"][setting]["steps"]
    ours = replay(setting, teacher_files)
    mismatches = _mismatches(ours, official)
    assert not mismatches, f"{setting} departs from the official step:\n" + "\n".join(mismatches[:12])


def test_a_changed_step_is_caught(teacher_files):
    """The comparison is sharp: a 1e-5 change of the learning rate shows in the checksums of the first step."""
    setting = "cifar100/wrn40_2_vgg8/sd_kd"
    official = RECORD["cases"][setting]["steps"]
    cfg, module = build(setting, teacher_files)
    optimizer = _optimizer(module)
    optimizer.param_groups[0]["lr"] *= 1 + 1e-5
    initial = rules.snapshot(module.student)
    module.train()
    x, y = rules.images(0), torch.tensor(RECORD["labels"][_pair(setting)][0])
    loss = one_step(cfg, module, optimizer, x, y, 0)
    figures = rules.student_checksums(module.student, initial)
    assert rules.relative_error(float(loss), official[0]["loss"]) <= RTOL  # the loss is before the update
    assert rules.relative_error(figures["delta_sq"], official[0]["delta_sq"]) > 10 * RTOL
