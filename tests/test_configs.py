"""Every file of the conf tree composes, and every experiment instantiates its networks and data module."""

from __future__ import annotations

import importlib.util

import lightning as L
import pytest
import torch
from app_helpers import CONF_DIR, TINY, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sdd_lightning.builders import build_module, check_config, is_distillation

EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix("")) for p in (CONF_DIR / "experiment").rglob("*.yaml")
)
GROUPS = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("data", "distill", "optimizer", "scheduler", "trainer", "logger", "callbacks", "hparams_search")
}


def test_the_tree_has_every_published_setting():
    cifar = [e for e in EXPERIMENTS if e.startswith("cifar100/") and "ablation" not in e and "teacher" not in e]
    assert len(cifar) == 10 * 6 + 2  # ten pairs x six methods, and the ablation pair's KD / SD-KD
    assert len([e for e in EXPERIMENTS if e.startswith("cifar100/ablation/")]) == 2 * 5 + 5
    assert len([e for e in EXPERIMENTS if e.startswith("cifar100/teacher_")]) == 6
    assert len([e for e in EXPERIMENTS if e.startswith("imagenet/")]) == 2 * 6 + 2
    assert len([e for e in EXPERIMENTS if e.startswith("cub200/")]) == 5 * 6 + 6


def _optuna_sweeper_installed() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option):
    if group == "hparams_search" and not _optuna_sweeper_installed():
        pytest.skip("the optuna sweeper is an optional extra (pip install -e '.[optuna]')")
    override = f"{group}=[{option}]" if group == "logger" else f"{group}={option}"
    cfg = compose_config([override])
    assert cfg is not None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path, monkeypatch):
    # Teacher weights are not available here: build the teacher without them (nothing is downloaded).
    cfg = compose_config(
        [f"experiment={experiment}", "teacher.checkpoint=null", "teacher.allow_random=true", "~teacher.kwargs.weights"]
        if "imagenet/" in experiment and "baseline" not in experiment
        else [f"experiment={experiment}", "teacher.checkpoint=null", "teacher.allow_random=true"],
        run_dir=tmp_path,
    )
    if not experiment.startswith("quickstart/"):
        assert cfg.published is not None, "every experiment records the published number it targets"
    check_config(cfg)
    datamodule = instantiate(cfg.data)  # constructing a DataModule reads no data
    expected_classes = {"cifar100": 100, "cub200": 200, "imagenet": 1000, "quickstart": cfg.data.get("num_classes")}
    assert datamodule.num_classes == expected_classes[experiment.split("/")[0]]
    with torch.device("meta"):  # shapes and structure without the cost of initialising the weights
        module = build_module(cfg, datamodule.num_classes)
    if is_distillation(cfg):
        assert tuple(module.head.scales) == tuple(cfg.distill.scales)
        assert cfg.distill.scales[0] == 1
    else:
        assert not hasattr(module, "teacher")


RUNTIME = {
    # trainer: (channels_last, compile, fold_teacher_bn, sync_batchnorm)
    "cpu": (False, False, True, False),
    "gpu": (True, False, True, False),
    "ddp": (True, False, True, True),
    "ddp_sim": (False, False, True, False),
}


@pytest.mark.parametrize("trainer", sorted(RUNTIME))
def test_a_trainers_runtime_switches_win_over_the_root_defaults(trainer):
    runtime = compose_config([f"trainer={trainer}"]).runtime
    assert (runtime.channels_last, runtime.compile, runtime.fold_teacher_bn, runtime.sync_batchnorm) == RUNTIME[trainer]


def test_a_command_line_override_wins_over_the_trainer():
    cfg = compose_config(["trainer=gpu", "runtime.channels_last=false", "runtime.fold_teacher_bn=false"])
    assert not cfg.runtime.channels_last and not cfg.runtime.fold_teacher_bn
    assert compose_config(["trainer=ddp", "runtime.sync_batchnorm=false"]).trainer.sync_batchnorm is False


def test_an_experiment_keeps_its_trainers_switches():
    cfg = compose_config(["experiment=imagenet/res34_res18_sd_kd"])
    assert cfg.runtime.sync_batchnorm and cfg.trainer.sync_batchnorm and cfg.runtime.channels_last


def test_trainer_ddp_gives_the_student_syncbatchnorm(tmp_path):
    # The Trainer that trainer=ddp builds, on CPU processes instead of GPUs. PyTorch's DDP runs SyncBatchNorm on
    # GPUs only, so this checks what Lightning's DDP strategy does to the module before it wraps it.
    cfg = compose_config([*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], run_dir=tmp_path)
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=False, default_root_dir=tmp_path)
    module = build_module(cfg, 16)
    synced = trainer.strategy._layer_sync.apply(module)  # what DDPStrategy.setup applies
    norms = {type(m).__name__ for m in synced.model.modules() if "Norm" in type(m).__name__}
    assert norms == {"SyncBatchNorm"}
