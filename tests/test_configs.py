"""Every file of the conf tree composes, and every setting of the paper builds its module and data module."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers.app import CONF_DIR, TINY, compose_config
from helpers.training import quiet_trainer
from omegaconf import OmegaConf

from sdd_lightning.builders import build_datamodule, build_module, check_config, is_distillation
from sdd_lightning.catalog import published, published_numbers, setting_names, setting_overrides
from sdd_lightning.models import build_model
from sdd_lightning.reporting import recipes

EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix("")) for p in (CONF_DIR / "experiment").rglob("*.yaml")
)
PAIRS = sorted(str(p.relative_to(CONF_DIR / "pair").with_suffix("")) for p in (CONF_DIR / "pair").rglob("*.yaml"))
METHODS = ["kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd"]
SETTINGS = list(setting_names())  # with the settings that have no published number
GROUP_NAMES = ("data", "loss", "distill", "optimizer", "scheduler", "trainer", "logger", "callbacks", "hparams_search")
GROUPS = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) for group in GROUP_NAMES}


def test_the_catalogue_has_every_published_setting():
    def count(prefix: str, parts: int | None = None) -> int:
        return len([s for s in SETTINGS if s.startswith(prefix) and (parts is None or s.count("/") + 1 == parts)])

    # every pair of the official configs/cifar100/sdd_{kd,dkd,nkd}/ (17) with six methods
    assert count("cifar100/", 3) - count("cifar100/ablation/") == 17 * 6
    assert count("cifar100/ablation/") == 2 * 5 + 5
    # logit standardization: five pairs x (KD, DKD, SD-KD, SD-DKD) + LS; the LS paper reports the plain two
    assert (
        count("cifar100/ls/", 4) == 5 * 4
        and len([s for s, v in published().items() if s.startswith("cifar100/ls/") and v]) == 10
    )
    assert count("cifar100/teacher_") == 6
    assert count("imagenet/", 3) == 2 * 6 and count("imagenet/baseline_") == 2
    assert count("cub200/", 3) == 5 * 6 and count("cub200/teacher_") + count("cub200/baseline_") == 6
    assert len(PAIRS) == 17 + 2 + 5
    for setting in SETTINGS:  # every name in conf/published.yaml is a runnable setting
        assert setting_overrides(setting)


def _optuna_sweeper_installed() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:
        return False


ABSENT = object()  # a key the option leaves out of the config
KD, DKD, NKD = (f"sdd_lightning.method.losses.{name}" for name in ("KDLoss", "DKDLoss", "NKDLoss"))
DISTILLATION = "sdd_lightning.training.module.DistillationModule"
LOGGERS = "sdd_lightning.training.loggers"
# What each option of a config group puts in the composed config (read from conf/<group>/<option>.yaml; the
# pair-dependent values are the root defaults pair_settings.sd_scales=[1, 2, 4], dkd_beta=8, nkd_gamma=8).
GROUP_OPTIONS = {
    ("data", "cifar100"): {
        "data._target_": "sdd_lightning.data.Cifar100DataModule",
        "data.batch_size": 64,
        "data.eval_batch_size": 256,
        "data.download": False,
        "data.val_split": None,
    },
    ("data", "cub200"): {
        "data._target_": "sdd_lightning.data.Cub200DataModule",
        "data.batch_size": 64,
        "data.eval_batch_size": 128,
        "data.drop_last": True,
    },
    ("data", "imagenet"): {
        "data._target_": "sdd_lightning.data.ImageNetDataModule",
        "data.batch_size": 256,
        "data.eval_batch_size": 256,
        "data.num_workers": 8,
    },
    ("data", "synthetic"): {
        "data._target_": "sdd_lightning.data.SyntheticDataModule",
        "data.num_classes": 16,
        "data.num_train": 10000,
        "data.num_val": 2000,
        "data.device_resident": True,
    },
    ("loss", "kd"): {"distill.loss": {"_target_": KD, "temperature": 4.0, "standardize": False}},
    ("loss", "dkd"): {
        "distill.loss": {"_target_": DKD, "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "standardize": False}
    },
    ("loss", "nkd"): {
        "distill.loss": {
            "_target_": NKD,
            "temperature": 4.0,
            "gamma": 8.0,
            "exclude_target": False,
            "standardize": False,
        }
    },
    ("distill", "none"): {
        "method": "none",
        "distill._target_": "sdd_lightning.training.module.ClassificationModule",
        "distill.loss": ABSENT,
        "distill.scales": ABSENT,
    },
    **{
        ("distill", method): {
            "method": method,
            "distill._target_": DISTILLATION,
            "distill.loss._target_": loss,
            "distill.scales": scales,
            "distill.pooling": "exact",
            "distill.consistency": "correctness",
            "distill.complementary_weight": 2.0,
            "distill.consistent_weight": 1.0,
            "distill.ce_weight": ce_weight,
            "distill.kd_weight": kd_weight,
            "distill.warmup_epochs": warmup,
        }
        for method, loss, scales, ce_weight, kd_weight, warmup in [
            ("kd", KD, [1], 0.1, 0.9, 0),
            ("sd_kd", KD, [1, 2, 4], 0.1, 0.9, 0),
            ("dkd", DKD, [1], 1.0, 1.0, 20),
            ("sd_dkd", DKD, [1, 2, 4], 1.0, 1.0, 20),
            ("nkd", NKD, [1], 1.0, 1.0, 20),
            ("sd_nkd", NKD, [1, 2, 4], 1.0, 1.0, 20),
        ]
    },
    ("optimizer", "sgd"): {
        "optimizer._target_": "torch.optim.SGD",
        "optimizer.lr": 0.05,
        "optimizer.momentum": 0.9,
        "optimizer.weight_decay": 5e-4,
        "optimizer.nesterov": False,
    },
    ("scheduler", "cosine"): {
        "scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "scheduler.T_max": 240,  # ${epochs}
        "scheduler.eta_min": 0.0,
    },
    ("scheduler", "multistep"): {
        "scheduler._target_": "torch.optim.lr_scheduler.MultiStepLR",
        "scheduler.milestones": [150, 180, 210],
        "scheduler.gamma": 0.1,
    },
    ("scheduler", "none"): {"scheduler": {}},
    ("trainer", "cpu"): {
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "trainer.strategy": "auto",
        "trainer.precision": "32-true",
        "trainer.max_epochs": 240,
        "trainer.gradient_clip_val": 40.0,
        "trainer.gradient_clip_algorithm": "norm",
        "trainer.sync_batchnorm": ABSENT,
    },
    ("trainer", "gpu"): {
        "trainer.accelerator": "gpu",
        "trainer.devices": 1,
        "trainer.precision": "bf16-mixed",
        "trainer.benchmark": True,
        "trainer.gradient_clip_val": 40.0,
        "optimizer.foreach": True,
    },
    ("trainer", "ddp"): {
        "trainer.accelerator": "gpu",
        "trainer.devices": -1,
        "trainer.num_nodes": 1,
        "trainer.strategy": "ddp",
        "trainer.precision": "bf16-mixed",
        "trainer.sync_batchnorm": True,
    },
    ("trainer", "ddp_sim"): {
        "trainer.accelerator": "cpu",
        "trainer.devices": 2,
        "trainer.strategy._target_": "lightning.pytorch.strategies.DDPStrategy",
        "trainer.strategy.timeout.seconds": 120,
        "trainer.precision": "32-true",
        "trainer.sync_batchnorm": False,
    },
    ("logger", "csv"): {
        "logger.csv._target_": f"{LOGGERS}.ResumableCSVLogger",
        "logger.csv.flush_logs_every_n_steps": 1,
        "logger.tensorboard": ABSENT,
        "logger.wandb": ABSENT,
    },
    ("logger", "tensorboard"): {
        "logger.tensorboard._target_": f"{LOGGERS}.ResumableTensorBoardLogger",
        "logger.tensorboard.default_hp_metric": False,
        "logger.csv": ABSENT,
    },
    ("logger", "wandb"): {
        "logger.wandb._target_": f"{LOGGERS}.ResumableWandbLogger",
        "logger.wandb.project": "sdd-lightning",
        "logger.wandb.log_model": False,
        "logger.wandb.offline": False,
        "logger.csv": ABSENT,
    },
    ("logger", "many"): {
        "logger.csv._target_": f"{LOGGERS}.ResumableCSVLogger",
        "logger.tensorboard._target_": f"{LOGGERS}.ResumableTensorBoardLogger",
        "logger.wandb._target_": f"{LOGGERS}.ResumableWandbLogger",
    },
    ("logger", "none"): {"logger": {}},
    ("callbacks", "default"): {
        "callbacks.model_checkpoint._target_": "lightning.pytorch.callbacks.ModelCheckpoint",
        "callbacks.model_checkpoint.monitor": "val/acc1",
        "callbacks.model_checkpoint.mode": "max",
        "callbacks.last_checkpoint._target_": "sdd_lightning.training.callbacks.LastCheckpoint",
        "callbacks.last_checkpoint.save_on_exception": True,
        "callbacks.lr_monitor.logging_interval": "epoch",
        "callbacks.progress_bar._target_": "lightning.pytorch.callbacks.RichProgressBar",
        "callbacks.region_maps.every_n_epochs": 10,
    },
    ("callbacks", "quiet"): {
        "callbacks.model_checkpoint.monitor": "val/acc1",
        "callbacks.last_checkpoint._target_": "sdd_lightning.training.callbacks.LastCheckpoint",
        "callbacks.lr_monitor.logging_interval": "epoch",
        "callbacks.progress_bar": None,
        "callbacks.region_maps": None,
    },
    ("hparams_search", "sdd_optuna"): {
        "hydra.sweeper._target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "hydra.sweeper.direction": "maximize",
        "hydra.sweeper.n_trials": 20,
        "hydra.sweeper.params": {
            "distill.complementary_weight": "interval(1.0, 8.0)",
            "distill.loss.temperature": "choice(1.0, 2.0, 4.0, 6.0, 8.0)",
        },
    },
}


def _selected(cfg, key: str):
    """The resolved value at ``key`` (a plain dict or list for a node), or ``ABSENT``."""
    value = OmegaConf.select(cfg, key, default=ABSENT)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def test_every_group_option_has_its_expected_values():
    assert sorted(GROUP_OPTIONS) == sorted((g, o) for g, opts in GROUPS.items() for o in opts)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_to_its_values(group, option):
    if group == "hparams_search" and not _optuna_sweeper_installed():
        pytest.skip("the optuna sweeper is an optional extra (pip install -e '.[optuna]')")
    override = f"{group}=[{option}]" if group == "logger" else f"{group}={option}"
    cfg = compose_config([override])
    if group not in ("logger", "hparams_search"):  # Hydra records no choice for a list of options
        assert cfg.hydra.runtime.choices[group] == option
    composed = {key: _selected(cfg, key) for key in GROUP_OPTIONS[group, option]}
    assert composed == GROUP_OPTIONS[group, option]


def _buildable(setting_or_overrides: list[str], tmp_path):
    # Teacher weights are not available here: build the teacher without them (nothing is downloaded).
    overrides = [*setting_or_overrides, "teacher.checkpoint=null", "teacher.allow_random=true"]
    cfg = compose_config(overrides, run_dir=tmp_path)
    if (cfg.teacher.get("kwargs") or {}).get("weights") is not None:
        cfg = compose_config([*overrides, "~teacher.kwargs.weights"], run_dir=tmp_path)
    check_config(cfg)
    datamodule = build_datamodule(cfg)  # constructing a DataModule reads no data
    with torch.device("meta"):  # shapes and structure without the cost of initialising the weights
        module = build_module(cfg, datamodule.num_classes)
    return cfg, datamodule, module


def _recipe_table() -> dict[str, dict[str, str]]:
    """docs/recipes.md's rows by setting (the table the fidelity review reads)."""
    lines = [line for line in recipes.TABLE_PATH.read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {
        row[0]: dict(zip(header, row, strict=True))
        for row in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])
    }


RECIPES = _recipe_table()


def _value(text: str) -> float | None:
    return None if text == "-" else float(text)


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_published_setting_builds_the_values_of_the_recipe_table(setting, tmp_path):
    """The built objects, not the config, hold each value docs/recipes.md promises for the setting."""
    cfg, datamodule, module = _buildable(setting_overrides(setting), tmp_path)
    expected_classes = {"cifar100": 100, "cub200": 200, "imagenet": 1000}
    assert datamodule.num_classes == expected_classes[setting.split("/")[0]]
    row = RECIPES[setting]
    assert datamodule.batch_size == int(row["batch"].split(" x ")[0])
    assert str(cfg.trainer.precision) == row["precision"]
    optimizer = module.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["lr"] == float(row["LR"]) and optimizer.defaults["weight_decay"] == float(row["WD"])
    if not is_distillation(cfg):
        assert not hasattr(module, "teacher") and row["method"] == "none"
        return
    loss = module.distillation_loss
    settings = loss.base.settings()
    assert (module.ce_weight, module.kd_weight, module.warmup_epochs) == (
        float(row["CE"]),
        float(row["KD"]),
        float(row["warm-up"]),
    )
    assert settings.get("temperature") == _value(row["T"])
    alpha_beta = [_value(v) for v in row["DKD α/β"].split(" / ")] if row["DKD α/β"] != "-" else [None, None]
    assert [settings.get("alpha"), settings.get("beta")] == alpha_beta
    assert settings.get("gamma") == _value(row["NKD γ"])
    soft_term = {None: "-", False: "all classes", True: "target excluded"}
    assert soft_term[settings.get("exclude_target")] == row["NKD soft term"]
    assert settings.get("standardize") is (row["LS"] == "yes")
    numbers = published_numbers()[setting]
    shown = "/".join(f"{numbers[m]:.2f}" for m in ("top1", "top5") if m in numbers)
    assert row["published"] == (shown or "no published number")
    assert "{" + ", ".join(map(str, module.head.scales)) + "}" == row["M"]
    if len(module.head.scales) > 1:
        assert loss.complementary_weight == float(row["β"])
        assert (loss.consistency.value, module.head.pooling.value) == (row["consistency"], row["pooling"])


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("quickstart/")])
def test_the_quickstart_experiments_build(experiment, tmp_path):
    """The three steps of the quickstart: a small_cnn teacher, then tiny_cnn by KD and by SD-KD ({1, 2, 4})."""
    cfg, datamodule, module = _buildable([f"experiment={experiment}"], tmp_path)
    step = experiment.removeprefix("quickstart/")
    assert (type(datamodule).__name__, datamodule.num_classes, datamodule.batch_size) == ("SyntheticDataModule", 16, 64)
    assert (datamodule.num_train, datamodule.num_val) == (6000, 2000)
    assert cfg.epochs == (4 if step == "teacher" else 5) and cfg.run_name == f"quickstart-{step}"
    optimizer = module.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["lr"] == 0.05
    assert module.scheduler_factory.func is torch.optim.lr_scheduler.CosineAnnealingLR
    assert module.scheduler_factory.keywords["T_max"] == cfg.epochs

    def widths(network: torch.nn.Module) -> list[int]:  # the teacher's BatchNorm is folded: its convolutions tell
        return [m.out_channels for m in network.modules() if isinstance(m, torch.nn.Conv2d)]

    with torch.device("meta"):
        small_cnn, tiny_cnn = widths(build_model("small_cnn", 16)), widths(build_model("tiny_cnn", 16))
    assert small_cnn != tiny_cnn
    if step == "teacher":
        assert type(module).__name__ == "ClassificationModule" and widths(module.model) == small_cnn
        return
    assert type(module).__name__ == "DistillationModule"
    assert widths(module.model) == tiny_cnn and widths(module.teacher) == small_cnn
    assert type(module.distillation_loss.base).__name__ == "KDLoss"
    assert module.head.scales == ((1,) if step == "kd" else (1, 2, 4))


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", ["none", *METHODS])
def test_every_pair_composes_with_every_method(pair, method):
    cfg = compose_config([f"pair={pair}", f"distill={method}"])
    assert cfg.method == method
    if method != "none":
        assert cfg.distill.loss._target_.endswith(("KDLoss", "DKDLoss", "NKDLoss"))
        specialised = (CONF_DIR / "pair_method" / pair / f"{method}.yaml").is_file()
        expected = list(cfg.pair_settings.sd_scales) if method.startswith("sd_") else [1]
        assert specialised or list(cfg.distill.scales) == expected


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


def test_a_pair_keeps_its_recipes_trainer_switches():
    cfg = compose_config(["pair=imagenet/res34_res18", "distill=sd_kd"])
    assert cfg.runtime.sync_batchnorm and cfg.trainer.sync_batchnorm and cfg.runtime.channels_last


def test_trainer_ddp_gives_the_student_syncbatchnorm(tmp_path):
    # The Trainer that trainer=ddp builds, on CPU processes instead of GPUs. PyTorch's DDP runs SyncBatchNorm on
    # GPUs only, so this checks what Lightning's DDP strategy does to the module before it wraps it.
    cfg = compose_config([*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], run_dir=tmp_path)
    trainer = quiet_trainer(tmp_path, **OmegaConf.to_container(cfg.trainer, resolve=True))
    module = build_module(cfg, 16)
    synced = trainer.strategy._layer_sync.apply(module)  # what DDPStrategy.setup applies
    norms = {type(m).__name__ for m in synced.model.modules() if "Norm" in type(m).__name__}
    assert norms == {"SyncBatchNorm"}


def test_the_built_module_holds_the_runs_solver_switches_and_teacher_check(tmp_path):
    switches = ["runtime.channels_last=true", "runtime.compile=true", "runtime.fold_teacher_bn=true"]
    teacher = ["teacher.expected_acc1=0.7", "teacher.acc1_margin=0.05", "optimizer.lr=0.123"]
    overrides = [*setting_overrides("cifar100/res32x4_res8x4/sd_kd"), *switches, *teacher]
    _, _, module = _buildable(overrides, tmp_path)
    assert module.channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.teacher.modules())
    assert hasattr(module.student.forward_features, "_torchdynamo_orig_callable")
    assert (module.teacher_expected_acc1, module.teacher_acc1_margin) == (0.7, 0.05)
    optimizer = module.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.123
    scheduler = module.scheduler_factory(optimizer)
    assert type(scheduler) is torch.optim.lr_scheduler.MultiStepLR and sorted(scheduler.milestones) == [150, 180, 210]
    unchecked = _buildable([*overrides, "teacher.check=false"], tmp_path)[2]
    assert unchecked.teacher_expected_acc1 is None
    plain = _buildable(["distill=none", "student.arch=resnet8x4", "optimizer.lr=0.123", *switches], tmp_path)[2]
    assert plain.channels_last and hasattr(plain.model.forward, "_torchdynamo_orig_callable")
    optimizer = plain.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["lr"] == 0.123 and type(plain.scheduler_factory(optimizer)) is type(scheduler)


def test_the_pair_settings_defaults_are_the_library_defaults():
    """conf/train.yaml's pair_settings (used where a pair file sets none) equal the classes' own defaults, which
    tests/method/test_losses.py pins to the official values: a config run and a Python-built module agree."""
    from sdd_lightning.method.heads import ScaleDecoupledHead
    from sdd_lightning.method.losses import DKDLoss, NKDLoss

    defaults = OmegaConf.to_container(compose_config([]).pair_settings)
    assert defaults == {
        "sd_scales": list(ScaleDecoupledHead().scales),
        "dkd_beta": DKDLoss().settings()["beta"],
        "nkd_gamma": NKDLoss().settings()["gamma"],
    }
    assert defaults == {"sd_scales": [1, 2, 4], "dkd_beta": 8.0, "nkd_gamma": 8.0}
