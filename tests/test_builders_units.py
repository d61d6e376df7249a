"""The config-to-object code of ``sdd_lightning.builders``, called directly: how a refused value becomes a message
that names the override to change, the names suggested for a typo, when W&B goes offline, and which accuracy a
teacher is expected to have."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sdd_lightning.builders import (
    _call,
    _factory,
    _wandb_offline_unless_logged_in,
    build_callbacks,
    build_loggers,
    build_network,
    check_config,
    config_error,
    expected_teacher_acc1,
    instantiate_node,
)
from sdd_lightning.errors import ConfigError, did_you_mean
from sdd_lightning.models import available_models, build_model
from sdd_lightning.reporting.model_card import CARD_FORMAT

CFG = OmegaConf.create(
    {
        "base_lr": 0.5,
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": "${base_lr}", "momentum": 0.9},
        "distill": {"ce_weight": -1, "loss": {"_target_": "x.KDLoss", "temperature": 0, "beta": -2}, "beta": 3},
    }
)


def test_the_message_names_the_override_with_the_value_the_run_used():
    # the value is the resolved one (an interpolation shows its number), and the owner's "optimizer: " prefix,
    # which repeats the path, is dropped
    error = config_error("optimizer", CFG.optimizer, ValueError("optimizer: Invalid learning rate: 0.5"))
    assert isinstance(error, ConfigError)
    assert str(error) == "optimizer.lr=0.5: Invalid learning rate: 0.5 (fix: optimizer.lr=<a valid value>)"


def test_a_nested_setting_is_named_by_its_full_path():
    error = config_error("distill", CFG.distill, ValueError("KDLoss: temperature must be > 0, got 0"))
    assert str(error) == (
        "distill.loss.temperature=0: KDLoss: temperature must be > 0, got 0 "
        "(fix: distill.loss.temperature=<a valid value>)"
    )


def test_a_setting_before_a_nested_node_is_still_found():
    error = config_error("distill", CFG.distill, ValueError("ce_weight must be a finite number >= 0, got -1"))
    assert str(error).startswith("distill.ce_weight=-1: ce_weight must be")


def test_a_name_that_two_nodes_share_names_both_overrides():
    error = config_error("distill", CFG.distill, ValueError("beta must be >= 0, got -2"))
    assert str(error) == (  # in the order of the config
        "distill.loss.beta=-2, distill.beta=3: beta must be >= 0, got -2 "
        "(fix: distill.loss.beta / distill.beta=<a valid value>)"
    )


def test_the_first_named_setting_is_the_one_to_fix():
    error = config_error("optimizer", CFG.optimizer, ValueError("momentum 0.9 is too large for lr 0.5"))
    assert str(error).startswith("optimizer.momentum=0.9: momentum 0.9")


@pytest.mark.parametrize(
    ("path", "node", "message", "expected"),
    [
        # Hydra's own keys are never the override to change
        ("distill", CFG.distill, "cannot import _target_ x.KDLoss", "distill: cannot import _target_ x.KDLoss"),
        ("scheduler", None, "boom", "scheduler: boom"),  # no node: the scheduler is off
        (
            "distill.scales",
            OmegaConf.create([1, 0]),
            "scales must be positive",
            "distill.scales: scales must be positive",
        ),
        ("optimizer", CFG.optimizer, "something else went wrong", "optimizer: something else went wrong"),
    ],
)
def test_without_a_named_setting_the_message_points_at_the_node(path, node, message, expected):
    assert str(config_error(path, node, ValueError(message))) == f"{expected} (check the {path}.* overrides)"


def test_a_plain_dict_node_is_read_like_a_config_node():
    error = config_error("data", {"batch_size": 0, "root": "/x"}, ValueError("batch_size must be >= 1, got 0"))
    assert str(error) == "data.batch_size=0: batch_size must be >= 1, got 0 (fix: data.batch_size=<a valid value>)"


def test_a_typo_gets_the_three_closest_names():
    known = ["resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "vgg8"]
    hint = did_you_mean("resnet9", known)
    assert hint.startswith(" Did you mean 'resnet8' or ") and hint.endswith("?")
    assert hint.count(" or ") == 2 and "vgg8" not in hint


def test_a_name_in_the_wrong_case_is_suggested_as_written_in_the_registry():
    assert did_you_mean("SHUFFLEV1", ["ShuffleV1", "ShuffleV2", "resnet8"]) == " Did you mean 'ShuffleV1'?"


def test_nothing_close_suggests_nothing():
    assert did_you_mean("zzz", ["resnet8", "vgg8"]) == ""


# --- W&B: offline unless logged in --------------------------------------------------------------------------------


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No W&B login anywhere: an empty home folder, no key, no mode, the default host."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _netrc(home, host: str) -> None:
    path = home / ".netrc"
    path.write_text(f"machine {host}\n  login user\n  password secret\n")
    path.chmod(0o600)


def _offline_after_the_check() -> bool:
    """Whether the check sets ``logger.wandb.offline`` (it starts False)."""
    cfg = OmegaConf.create({"logger": {"wandb": {"offline": False}}})
    _wandb_offline_unless_logged_in(cfg)
    return cfg.logger.wandb.offline


def test_wandb_without_any_login_goes_offline(wandb_env):
    assert _offline_after_the_check() is True


def test_wandb_with_an_api_key_stays_online(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    assert _offline_after_the_check() is False


def test_wandb_with_a_netrc_login_for_its_host_stays_online(wandb_env, monkeypatch):
    _netrc(wandb_env, "api.wandb.ai")
    assert _offline_after_the_check() is False
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server: its own login counts
    assert _offline_after_the_check() is True
    _netrc(wandb_env, "wandb.example.org")
    assert _offline_after_the_check() is False


def test_an_unreadable_netrc_means_offline(wandb_env):
    (wandb_env / ".netrc").write_text("machine\n")  # a parse error, not a crash
    (wandb_env / ".netrc").chmod(0o600)
    assert _offline_after_the_check() is True


@pytest.mark.parametrize("mode", ["offline", "OFFLINE", "disabled", "Disabled", "dryrun", "DRYRUN"])
def test_an_offline_mode_wins_over_a_login(wandb_env, monkeypatch, mode):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    monkeypatch.setenv("WANDB_MODE", mode)
    assert _offline_after_the_check() is True


def test_an_online_mode_with_a_login_stays_online(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert _offline_after_the_check() is False


def test_building_the_loggers_sends_wandb_offline_without_a_login(wandb_env):
    cfg = OmegaConf.create(
        {
            "logger": {
                "wandb": {
                    "_target_": "lightning.pytorch.loggers.WandbLogger",
                    "project": "p",
                    "save_dir": str(wandb_env),
                    "offline": False,
                },
                "csv": None,  # an entry set to null is left out
            }
        }
    )
    (logger,) = build_loggers(cfg)
    assert type(logger).__name__ == "WandbLogger" and cfg.logger.wandb.offline is True


def test_a_logger_or_callback_that_refuses_its_settings_names_its_override(tmp_path):
    bad_logger = {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path), "no_such_option": 1}
    with pytest.raises(ConfigError, match=r"^logger\.csv\.no_such_option=1: "):
        build_loggers(OmegaConf.create({"logger": {"csv": bad_logger}}))
    bad_callback = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "no_such_option": 2}
    with pytest.raises(ConfigError, match=r"^callbacks\.checkpoint\.no_such_option=2: "):
        build_callbacks(OmegaConf.create({"callbacks": {"checkpoint": bad_callback}}))


def test_callbacks_set_to_null_or_without_a_target_are_left_out():
    cfg = OmegaConf.create(
        {
            "callbacks": {
                "off": None,
                "settings_only": {"every_n_epochs": 2},
                "lr": {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor"},
            }
        }
    )
    assert [type(c).__name__ for c in build_callbacks(cfg)] == ["LearningRateMonitor"]
    assert build_callbacks(OmegaConf.create({"callbacks": None})) == []
    assert build_callbacks(OmegaConf.create({})) == []


# --- the accuracy a teacher is expected to have ---------------------------------------------------------------------


def _teacher_cfg(checkpoint, data="sdd_lightning.data.Cifar100DataModule", arch="resnet32x4", **teacher):
    node = {"arch": arch, "checkpoint": None if checkpoint is None else str(checkpoint), **teacher}
    return OmegaConf.create({"teacher": node, "data": {"_target_": data}})


def _crd_file(root, arch="resnet32x4"):
    """Where the CRD / mdistiller teachers live: ``<arch>_vanilla/ckpt_epoch_240.pth`` (not read here)."""
    return root / f"{arch}_vanilla" / "ckpt_epoch_240.pth"


def test_an_expected_accuracy_given_in_the_config_wins(tmp_path):
    assert expected_teacher_acc1(_teacher_cfg(_crd_file(tmp_path), expected_acc1=0.5)) == 0.5
    assert expected_teacher_acc1(_teacher_cfg(None, expected_acc1=1)) == 1.0


def test_without_a_checkpoint_nothing_is_expected():
    assert expected_teacher_acc1(_teacher_cfg(None)) is None
    assert expected_teacher_acc1(_teacher_cfg(None, expected_acc1=None)) is None


def test_a_crd_teacher_file_is_expected_to_score_the_papers_teacher_accuracy(tmp_path):
    assert expected_teacher_acc1(_teacher_cfg(_crd_file(tmp_path))) == pytest.approx(0.7942)  # SDD_METHOD section 5
    cub = _teacher_cfg(_crd_file(tmp_path, "vgg13"), data="sdd_lightning.data.Cub200DataModule", arch="vgg13")
    assert expected_teacher_acc1(cub) == pytest.approx(0.7019)


@pytest.mark.parametrize(
    ("where", "data", "arch"),
    [
        ("resnet32x4_vanilla/last.pth", "sdd_lightning.data.Cifar100DataModule", "resnet32x4"),  # another file name
        ("vgg13_vanilla/ckpt_epoch_240.pth", "sdd_lightning.data.Cifar100DataModule", "resnet32x4"),  # another arch
        ("resnet32x4_vanilla/ckpt_epoch_240.pth", "sdd_lightning.data.SyntheticDataModule", "resnet32x4"),
        ("resnet18_vanilla/ckpt_epoch_240.pth", "sdd_lightning.data.ImageNetDataModule", "resnet18"),  # none published
        ("resnet8_vanilla/ckpt_epoch_240.pth", "sdd_lightning.data.Cifar100DataModule", "resnet8"),  # none published
    ],
)
def test_other_checkpoints_have_no_expected_accuracy(tmp_path, where, data, arch):
    assert expected_teacher_acc1(_teacher_cfg(tmp_path / where, data=data, arch=arch)) is None


def test_the_model_card_beside_a_checkpoint_gives_its_measured_accuracy(tmp_path):
    weights = _crd_file(tmp_path)  # a card wins over the published number
    weights.parent.mkdir(parents=True)
    card = weights.with_suffix(".json")
    card.write_text(json.dumps({"format": CARD_FORMAT, "accuracy": {"acc1": 0.612}}))
    assert expected_teacher_acc1(_teacher_cfg(weights)) == pytest.approx(0.612)
    card.write_text(json.dumps({"format": CARD_FORMAT, "accuracy": None}))  # exported without measuring
    assert expected_teacher_acc1(_teacher_cfg(weights)) == pytest.approx(0.7942)
    card.write_text(json.dumps({"format": CARD_FORMAT, "accuracy": {"acc1": None}}))
    assert expected_teacher_acc1(_teacher_cfg(weights)) == pytest.approx(0.7942)


def _run_config(**overrides):
    """The keys check_config reads: a distillation run with a student, a teacher and its weights."""
    cfg = {
        "epochs": 2,
        "method": "sd_kd",
        "distill": {"_target_": "sdd_lightning.training.module.DistillationModule"},
        "student": {"arch": "resnet8x4"},
        "teacher": {"arch": "resnet32x4", "checkpoint": None, "allow_random": False, "kwargs": None},
    }
    for key, value in overrides.items():
        node, _, leaf = key.rpartition(".")
        (cfg[node] if node else cfg)[leaf] = value
    return OmegaConf.create(cfg)


KNOWN = ", ".join(sorted(available_models()))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": True}, "epochs=True: give the number of training epochs, an integer >= 1 (e.g. epochs=240)"),
        ({"student.arch": None}, f"student.arch is not set: give student.arch=<name> (known: {KNOWN})"),
        (
            {"teacher.arch": None},
            f"teacher.arch is not set: give teacher.arch=<name> (known: {KNOWN}), or distill=none to train without a "
            "teacher",
        ),
        (
            {"teacher.arch": "resnet32x5"},
            f"unknown teacher.arch='resnet32x5'. Did you mean 'resnet32x4' or 'resnet32' or 'resnet56'? Known names: "
            f"{KNOWN}; or "
            "'torchvision:<name>' / 'timm:<name>' for any torchvision or timm classifier, or the dotted path of your "
            "own network class (my_package.nets.MyNet)",
        ),
    ],
)
def test_check_config_names_the_setting_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_config(_run_config(**overrides))
    assert str(error.value) == message


def test_a_teacher_with_pretrained_weights_needs_no_checkpoint():
    check_config(_run_config(**{"teacher.kwargs": {"weights": "IMAGENET1K_V1"}}))
    with pytest.raises(ConfigError) as error:
        check_config(_run_config())
    assert str(error.value) == (
        "distill=sd_kd needs trained teacher weights: give teacher.checkpoint=<file> (mdistiller/CRD .pth, a .ckpt of "
        "ours, or a state_dict) or teacher.kwargs.weights=<torchvision weights>; train one with sdd-train "
        "experiment=<data>/teacher_<arch> (then teacher.checkpoint=<its run>/checkpoints/best-*.ckpt), or set "
        "SDD_TEACHER_DIR to the folder of the CRD teachers; for a smoke run only, teacher.allow_random=true distils "
        "from a randomly initialised teacher"
    )


def test_a_teacher_checkpoint_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "t.pth"
    with pytest.raises(ConfigError) as error:
        check_config(_run_config(**{"teacher.checkpoint": str(missing)}))
    assert str(error.value) == (
        f"teacher.checkpoint={missing} does not exist: give the path of its weights; the CRD teachers are looked up "
        "under $SDD_TEACHER_DIR (<dir>/<arch>_vanilla/ckpt_epoch_240.pth for CIFAR-100), or train one with sdd-train "
        "experiment=<data>/teacher_<arch>"
    )


def test_a_scheduler_that_refuses_its_settings_is_named_as_the_scheduler():
    cfg = OmegaConf.create({"scheduler": {"T_max": -1}, "distill": {"T_max": 3}})

    def refuse():
        raise ValueError("scheduler: T_max must be positive, got -1")

    with pytest.raises(ConfigError) as error:
        _call(cfg, refuse)
    assert (
        str(error.value) == "scheduler.T_max=-1: T_max must be positive, got -1 (fix: scheduler.T_max=<a valid value>)"
    )


class ThreeClasses(nn.Module):
    """A user network that ignores the class count it is given."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.classifier = nn.Linear(4, 3)

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.classifier(self.forward_features(x).mean((2, 3)))


def _network_config(**student):
    node = {"arch": "resnet8", "kwargs": None, "checkpoint": None} | student
    return OmegaConf.create(
        {"stem": "imagenet", "data": {"_target_": "sdd_lightning.data.Cifar100DataModule"}, "student": node}
    )


def _saved(tmp_path, arch="resnet8", classes=10, **kwargs):
    torch.manual_seed(1)
    network = build_model(arch, classes, **kwargs)
    path = tmp_path / f"{arch}-{classes}.pth"
    torch.save(network.state_dict(), path)
    return network, path


def test_a_network_gets_its_resolved_kwargs_and_its_checkpoint(tmp_path):
    plain = build_network(_network_config(), "student", 10)
    assert plain.conv1.kernel_size == (3, 3)
    saved, path = _saved(tmp_path, stem="imagenet")
    network = build_network(_network_config(kwargs={"stem": "${stem}"}, checkpoint=str(path)), "student", 10)
    assert network.conv1.kernel_size == (7, 7)  # the kwarg, interpolated, reached the constructor
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], value, msg=name)


def test_network_errors_name_the_setting_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_network(_network_config(kwargs={"stem": "round"}), "student", 10)
    assert str(error.value).startswith("student.arch=resnet8 with student.kwargs={'stem': 'round'}: ")
    missing = tmp_path / "none.pth"
    with pytest.raises(ConfigError) as error:
        build_network(_network_config(checkpoint=str(missing)), "student", 10)
    assert str(error.value).startswith(f"student.checkpoint={missing}: ")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": print}, unsafe)  # a pickled callable: never executed
    with pytest.raises(ConfigError) as error:
        build_network(_network_config(checkpoint=str(unsafe)), "student", 10)
    assert str(error.value).startswith(f"student.checkpoint={unsafe} was refused: ")
    _, five = _saved(tmp_path, classes=5)
    with pytest.raises(ConfigError) as error:
        build_network(_network_config(checkpoint=str(five)), "student", 10)
    assert str(error.value) == (
        f"student.checkpoint={five} holds a resnet8 for 5 classes, but the data set has 10: the class count differs. "
        "Fix: student.checkpoint=<a resnet8 trained on this data set>"
    )
    _, wider = _saved(tmp_path, arch="resnet8x4")
    with pytest.raises(ConfigError) as error:
        build_network(_network_config(checkpoint=str(wider)), "student", 10)
    first, *_, last = str(error.value).splitlines()
    assert first == f"student.checkpoint={wider} does not fit student.arch=resnet8 with 10 classes:"
    assert last == "Fix: student.arch=<the file's architecture> or student.checkpoint=<a file for resnet8>"


def test_a_user_network_with_another_class_count_is_refused_naming_the_data():
    with pytest.raises(ConfigError) as error:
        build_network(_network_config(arch="test_builders_units.ThreeClasses"), "student", 10)
    assert str(error.value) == (
        "student test_builders_units.ThreeClasses predicts 3 classes but data=Cifar100DataModule has 10: use a "
        "student.checkpoint trained on this data set"
    )


def test_an_optimizer_or_scheduler_node_without_a_target_means_none():
    assert _factory("scheduler", None) is None and _factory("scheduler", OmegaConf.create({"T_max": 3})) is None
    factory = _factory("optimizer", OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}))
    optimizer = factory([nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.1
    with pytest.raises(ConfigError) as error:
        _factory("scheduler", OmegaConf.create({"_target_": "sdd_lightning.method.losses.KDLoss", "temperature": -1}))
    assert str(error.value) == (
        "scheduler.temperature=-1: KDLoss: temperature must be > 0, got -1 (fix: scheduler.temperature=<a valid value>)"
    )


def test_instantiate_node_passes_its_arguments_and_names_the_node_of_any_other_failure(tmp_path):
    assert instantiate_node("x", OmegaConf.create({"_target_": "builtins.dict", "a": 1}), b=2) == {"a": 1, "b": 2}
    missing = tmp_path / "none"
    with pytest.raises(ConfigError) as error:
        instantiate_node("data", OmegaConf.create({"_target_": "os.stat", "path": str(missing)}))
    assert str(error.value).startswith("data: ") and str(missing) in str(error.value)


def test_a_distill_target_that_cannot_be_imported_is_named():
    with pytest.raises(ConfigError) as error:
        check_config(_run_config(**{"distill._target_": "no_such_package.Module"}))
    message = str(error.value)
    assert message.startswith("distill._target_=no_such_package.Module cannot be imported (")
    assert message.endswith(
        "); give a LightningModule class, e.g. distill._target_=sdd_lightning.training.module.DistillationModule "
        "or your own "
        "subclass (my_package.MyModule)"
    )
