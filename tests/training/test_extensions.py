"""The ways the library is extended, each run through sdd-train: a module subclass for networks without the
interface, a network of one's own by its dotted path, a base loss from outside the library, and a subclass that adds
a loss term computed from the feature maps (the FitNet-style hint of docs/extending.md)."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.app import TINY, compose_config, read_results, run_app
from helpers.extensions import FitNetHint
from helpers.training import SmallNet, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from sdd_lightning.builders import build_module
from sdd_lightning.cli.train import train
from sdd_lightning.method.losses import BASE_LOSSES, KDLoss
from sdd_lightning.training.module import DistillationModule

TESTS = Path(__file__).resolve().parents[1]
SEARCH_PATH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"


def test_a_subclass_for_networks_without_the_interface_trains_through_sdd_train(tmp_path):
    args = [
        *TINY,
        "distill=sd_kd",
        "distill._target_=helpers.extensions.PlainPairDistillation",
        "student.arch=helpers.extensions.PlainNet",
        "teacher.arch=helpers.extensions.PlainNet",
        "teacher.allow_random=true",
        "epochs=1",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={tmp_path}",
    ]
    result = run_app(args)  # the subprocess finds helpers on the suite's PYTHONPATH
    # PlainNet has no forward_features: only the subclass's hooks let the head find its map and classifier
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(tmp_path)
    assert results["status"] == "finished" and results["global_step"] == 2
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "model.trunk.0.weight" in state and "model.head.weight" in state


def test_a_base_loss_from_outside_the_library_plugs_in_from_the_command_line(tmp_path):
    cfg = compose_config(
        [
            *TINY,
            SEARCH_PATH,
            "distill=sd_kd",
            "loss=scaled_l1",
            "teacher.arch=small_cnn",
            "teacher.allow_random=true",
            "epochs=1",
            "trainer.limit_train_batches=2",
        ],
        tmp_path,
    )
    module = build_module(cfg, 16)
    assert type(module.distillation_loss.base).__name__ == "ScaledL1Loss"
    assert module.distillation_loss.base.settings() == {"scale": 0.5}
    results = train(cfg)
    assert results["status"] == "finished"
    hparams = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["loss"] == {"name": "ScaledL1Loss", "scale": 0.5}


def test_a_bad_setting_of_a_plugged_in_loss_names_its_override(tmp_path):
    cfg = compose_config(
        [
            *TINY,
            SEARCH_PATH,
            "distill=sd_kd",
            "loss=scaled_l1",
            "distill.loss.scale=-1",
            "teacher.arch=small_cnn",
            "teacher.allow_random=true",
        ],
        tmp_path,
    )
    with pytest.raises(ValueError, match=r"distill\.loss\.scale=-1: scale must be > 0"):
        build_module(cfg, 16)


def _defaults(function) -> dict:
    return {n: p.default for n, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize("method", ["kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd"])
def test_the_configs_and_the_classes_agree_on_every_default(method):
    """Without a pair, a method's config takes the library's defaults: one default per value, in the classes."""
    cfg = compose_config([f"distill={method}", "teacher.arch=small_cnn", "teacher.allow_random=true"])
    with torch.device("meta"):
        module = build_module(cfg, 16)
    defaults = _defaults(DistillationModule.__init__)
    # what a method sets on purpose: its base loss, CE/KD weights and warm-up (dkd/nkd), scales (sd_*)
    deliberate = {"loss", "scales", "ce_weight", "kd_weight", "warmup_epochs"}
    for name in ("pooling", "complementary_weight", "consistent_weight", "consistency"):
        assert name not in deliberate
        held = getattr(module.head if name == "pooling" else module.distillation_loss, name)
        assert held == defaults[name], name
    base = module.distillation_loss.base
    assert base == BASE_LOSSES[method.removeprefix("sd_")]()  # the loss class's own defaults
    if method.startswith("sd_"):
        assert module.head.scales == defaults["scales"]
    if method in ("kd", "sd_kd"):  # the library's defaults are the official SD-KD recipe
        assert (module.ce_weight, module.kd_weight, module.warmup_epochs) == (0.1, 0.9, 0.0)
        assert (defaults["ce_weight"], defaults["kd_weight"], defaults["warmup_epochs"]) == (0.1, 0.9, 0.0)
        assert base == KDLoss()  # the module's default loss (loss=None) is KDLoss()


def _hint_module(hint_weight: float = 3.0) -> FitNetHint:
    torch.manual_seed(0)
    module = FitNetHint(SmallNet(width=4), SmallNet(width=8), num_classes=10, scales=(1, 2), hint_weight=hint_weight)
    return module.train()


def _step_gradients(module: DistillationModule, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.student.named_parameters()}


def test_a_feature_map_term_of_a_subclass_reaches_the_loss_and_the_student_gradient():
    """FitNetHint (docs/extending.md): its hint is added to the step's loss, so it changes the student's gradient
    by exactly the hint's own gradient, and is logged under its name."""
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
    module = _hint_module(hint_weight=3.0)
    with_hint, grads = _step_gradients(module, batch)
    assert set(module._train_sums.means()) >= {"train/loss_hint", "train/loss_ce", "train/loss_kd"}
    logged_hint = module._train_sums.means()["train/loss_hint"]

    module.hint_weight = 0.0
    without_hint, grads_without = _step_gradients(module, batch)
    module.zero_grad(set_to_none=True)
    x, _ = batch
    hint = 3.0 * F.mse_loss(module.regressor(module.student.forward_features(x)), module.teacher.forward_features(x))
    hint.backward()

    torch.testing.assert_close(logged_hint, hint.detach())
    torch.testing.assert_close(with_hint - without_hint, hint.detach(), rtol=1e-5, atol=1e-6)
    assert hint > 0 and module.regressor.weight.grad.abs().sum() > 0
    for name, p in module.student.named_parameters():
        expected = torch.zeros_like(grads[name]) if p.grad is None else p.grad  # the classifier is not in the hint
        torch.testing.assert_close(grads[name] - grads_without[name], expected, rtol=1e-4, atol=1e-6, msg=name)
    assert module.student.features[0].weight.grad.abs().max() > 1e-6  # the hint reaches the first layer
    held = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert id(module.regressor.weight) in held  # the regressor trains with the student


def _as_if_cached(module: DistillationModule, monkeypatch) -> DistillationModule:
    """``module`` taking the step's teacher-cache path, the cache's read replaced by the teacher's logits."""
    module.teacher_cache_dir = "unused"
    monkeypatch.setattr(module, "cached_teacher_local", lambda x, views: module.teacher_logits(x)[1])
    return module


def test_with_the_teacher_cache_the_hook_gets_no_teacher_map(monkeypatch):
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    module = _as_if_cached(_hint_module(), monkeypatch)
    seen = []
    monkeypatch.setattr(module, "extra_terms", lambda student_map, teacher_map, batch: seen.append(teacher_map) or {})
    module.training_step(batch, 0)
    assert seen == [None]
    with pytest.raises(ValueError, match=r"without teacher\.cache_dir"):  # the example says why it cannot run
        _as_if_cached(_hint_module(), monkeypatch).training_step(batch, 0)


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (
            {"loss_kd": torch.tensor(1.0)},
            r"^FitNetHint\.extra_terms: the term 'loss_kd' takes the name of a logged value; give it another "
            r"\(taken: acc1, complementary_fraction, loss, loss_ce, loss_kd, teacher_cache_hit_rate\)$",
        ),
        ({"loss": torch.tensor(1.0)}, r"^FitNetHint\.extra_terms: the term 'loss' takes the name of a logged value"),
        ({"loss_hint": torch.ones(2)}, r"^FitNetHint\.extra_terms: 'loss_hint' must be a scalar tensor, got \(2,\)$"),
    ],
)
def test_an_extra_term_must_be_a_scalar_under_a_name_of_its_own(monkeypatch, terms, message):
    module = _hint_module()
    monkeypatch.setattr(module, "extra_terms", lambda *args: terms)
    with pytest.raises(ValueError, match=message):
        module.training_step((torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))), 0)


def test_a_feature_map_term_trains_through_sdd_train_and_is_logged_in_metrics_csv(tmp_path):
    args = [
        *TINY,
        "distill=sd_kd",
        "distill._target_=helpers.extensions.FitNetHint",
        "+distill.hint_weight=2.0",
        "teacher.arch=small_cnn",
        "teacher.allow_random=true",
        "epochs=2",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={tmp_path}",
    ]
    result = run_app(args)  # the subprocess finds helpers on the suite's PYTHONPATH
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_results(tmp_path)["status"] == "finished"
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/loss_hint")]
    assert len(rows) == 2  # one per epoch
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["hint_weight"] == 2.0 and hparams["warmup_epochs"] == 0
    assert "regressor.weight" in checkpoint["state_dict"]
    for row in rows:
        hint, ce, kd, loss = (float(row[f"train/{n}"]) for n in ("loss_hint", "loss_ce", "loss_kd", "loss"))
        assert math.isfinite(hint) and hint > 0
        # the logged loss is the weighted sum of the logged terms, the hint among them
        assert loss == pytest.approx(hparams["ce_weight"] * ce + hparams["kd_weight"] * kd + hint, rel=1e-5)


def test_the_worked_example_in_the_docs_is_the_tested_class():
    """docs/extending.md lists FitNetHint; the listing is this class, line for line, so the tested code is the one
    users read."""
    text = (TESTS.parent / "docs" / "extending.md").read_text()
    listings = [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]
    (listing,) = [block for block in listings if "class FitNetHint" in block]
    assert inspect.getsource(FitNetHint) in listing
    assert "distill._target_=helpers.extensions.FitNetHint" in text and "train/loss_hint" in text


class _MoreParts(DistillationModule):
    """Adds a diagnostic and two per-scale values to compute_loss's parts, the step unchanged."""

    def compute_loss(self, student_global, student_local, teacher_local, y):
        loss, parts = super().compute_loss(student_global, student_local, teacher_local, y)
        ones = torch.ones(student_local.shape[:2])  # (B, R)
        parts.diagnostics["two"] = torch.tensor(2.0)
        parts.per_scale["one"] = self._per_scale(ones.sum(0))  # every scale: mean 1 per sample and region
        parts.per_scale["three_local"] = 3 * self._per_scale(ones.sum(0))[1:]  # the local scales only
        return loss, parts


def test_every_part_a_subclass_adds_is_logged_per_scale_too(tmp_path):
    torch.manual_seed(0)
    module = _MoreParts(SmallNet(width=4), SmallNet(width=8), num_classes=10, scales=(1, 2, 4))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(20, 3, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g))
    trainer = quiet_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=8))  # batches of 8, 8 and 4
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert logged["train/two"] == 2.0
    assert {k: v for k, v in logged.items() if k.startswith(("train/one_", "train/three_"))} == {
        "train/one_scale1": 1.0,
        "train/one_scale2": 1.0,
        "train/one_scale4": 1.0,
        "train/three_local_scale2": 3.0,
        "train/three_local_scale4": 3.0,
    }
    assert {"train/loss_ce", "train/loss_kd", "train/complementary_fraction", "train/loss_kd_scale4"} <= set(logged)
