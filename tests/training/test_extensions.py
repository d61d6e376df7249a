"""The three ways the library is extended, each run through sdd-train: a module subclass for networks without
the interface, a network of one's own by its dotted path, and a base loss from outside the library."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from helpers.app import TINY, compose_config, read_results, run_app

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
