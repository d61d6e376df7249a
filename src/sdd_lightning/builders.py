"""From a resolved Hydra config to the objects of one run, with early, actionable errors.

Every check here runs before any data is read or any step is trained, and every error names the
command-line override that fixes it.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sdd_lightning.heads import validate_scales
from sdd_lightning.models import UnsafeCheckpointError, available_models, build_model, get_classifier, load_weights
from sdd_lightning.module import ClassificationModule, DistillationModule

__all__ = [
    "ConfigError",
    "build_callbacks",
    "build_loggers",
    "build_module",
    "build_network",
    "check_config",
    "is_distillation",
]


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the override that fixes it."""


def is_distillation(cfg: DictConfig) -> bool:
    """Whether the run has a teacher (any ``distill`` other than ``none``)."""
    return cfg.distill.method != "none"


def check_config(cfg: DictConfig) -> None:
    """Checks what can be checked without building anything: names, scales, teacher presence."""
    known = set(available_models())
    roles = ("student", "teacher") if is_distillation(cfg) else ("student",)
    for role in roles:
        arch = cfg[role].arch
        if arch is None:
            raise ConfigError(
                f"{role}.arch is not set: give {role}.arch=<name> (known: {', '.join(sorted(known))})"
                + ("" if role == "student" else ", or distill=none to train without a teacher")
            )
        if arch not in known and not _is_adapter_name(arch):
            raise ConfigError(
                f"unknown {role}.arch={arch!r}. Known names: {', '.join(sorted(known))}; or "
                f"'torchvision:<name>' / 'timm:<name>' for any torchvision or timm classifier"
            )
    if not is_distillation(cfg):
        return
    try:
        validate_scales(list(cfg.distill.scales))
    except ValueError as error:
        raise ConfigError(f"distill.scales={list(cfg.distill.scales)}: {error} (e.g. distill.scales=[1,2,4])") from None
    if cfg.distill.scales[0] != 1:
        raise ConfigError("distill.scales must start with 1 (the global region), e.g. distill.scales=[1,2,4]")
    pretrained = (cfg.teacher.get("kwargs") or {}).get("weights") is not None
    if cfg.teacher.checkpoint is None and not pretrained and not cfg.teacher.allow_random:
        raise ConfigError(
            f"distill={cfg.distill.method} needs trained teacher weights: give teacher.checkpoint=<file> "
            "(mdistiller/CRD .pth, a .ckpt of ours, or a state_dict) or teacher.kwargs.weights=<torchvision weights>; "
            "for a smoke run only, "
            "teacher.allow_random=true distils from a randomly initialised teacher"
        )
    if cfg.teacher.checkpoint is not None and not Path(cfg.teacher.checkpoint).is_file():
        raise ConfigError(f"teacher.checkpoint={cfg.teacher.checkpoint} does not exist: give the path of its weights")


def _is_adapter_name(arch: str) -> bool:
    return arch.startswith(("torchvision:", "timm:"))


def build_network(cfg: DictConfig, role: str, num_classes: int) -> nn.Module:
    """Builds ``cfg[role]`` (student or teacher) and loads its checkpoint when one is given."""
    node = cfg[role]
    kwargs = OmegaConf.to_container(node.kwargs, resolve=True) if node.get("kwargs") else {}
    try:
        network = build_model(node.arch, num_classes, **kwargs)
    except (KeyError, ValueError, TypeError, ImportError) as error:
        raise ConfigError(f"{role}.arch={node.arch} with {role}.kwargs={kwargs}: {error}") from error
    checkpoint = node.get("checkpoint")
    if checkpoint is not None:
        try:
            load_weights(network, checkpoint)
        except FileNotFoundError as error:
            raise ConfigError(f"{role}.checkpoint={checkpoint}: {error}") from error
        except UnsafeCheckpointError as error:
            raise ConfigError(f"{role}.checkpoint={checkpoint} was refused: {error}") from error
        except (RuntimeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"{role}.checkpoint={checkpoint} does not fit {role}.arch={node.arch} with {num_classes} classes:\n"
                f"{error}\nFix: {role}.arch=<the file's architecture> or {role}.checkpoint=<a file for {node.arch}>"
            ) from error
    classes = get_classifier(network).out_features
    if classes != num_classes:
        raise ConfigError(
            f"{role} {node.arch} predicts {classes} classes but data={cfg.data._target_.rsplit('.', 1)[-1]} has "
            f"{num_classes}: use a {role}.checkpoint trained on this data set"
        )
    return network


def _factory(node: Any) -> Any:
    """Instantiates a ``_partial_`` optimizer/scheduler node; an empty node means none."""
    if node is None or "_target_" not in node:
        return None
    return instantiate(node)


def build_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    """The LightningModule of the run: ``ClassificationModule`` for ``distill=none``, else distillation."""
    student = build_network(cfg, "student", num_classes)
    common = {
        "num_classes": num_classes,
        "optimizer": _factory(cfg.optimizer),
        "scheduler": _factory(cfg.get("scheduler")),
        "channels_last": bool(cfg.runtime.channels_last),
    }
    if not is_distillation(cfg):
        module = ClassificationModule(student, **common)
    else:
        teacher = build_network(cfg, "teacher", num_classes)
        d = cfg.distill
        module = DistillationModule(
            student,
            teacher,
            scales=tuple(d.scales),
            pooling=d.pooling,
            base=d.base,
            temperature=d.temperature,
            alpha=d.alpha,
            beta=d.beta,
            gamma=d.gamma,
            ce_weight=d.ce_weight,
            kd_weight=d.kd_weight,
            warmup_epochs=d.warmup_epochs,
            complementary_weight=d.complementary_weight,
            consistent_weight=d.consistent_weight,
            consistency=d.consistency,
            fold_teacher_bn=bool(cfg.runtime.fold_teacher_bn),
            **common,
        )
    if cfg.runtime.compile:
        for network in (module.model, getattr(module, "teacher", None)):
            if network is not None:
                network.forward_features = torch.compile(network.forward_features)
    return module


def _instantiate_group(node: Mapping | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(entry) for entry in node.values() if entry is not None and "_target_" in entry]


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (entries set to null are left out)."""
    return _instantiate_group(cfg.get("callbacks"))


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The loggers of ``cfg.logger``; W&B goes offline when it has no credentials."""
    node = cfg.get("logger")
    if node and node.get("wandb") is not None:
        _wandb_offline_unless_logged_in(cfg)
    return _instantiate_group(node)


def _wandb_offline_unless_logged_in(cfg: DictConfig) -> None:
    """Sets ``logger.wandb.offline`` when W&B has no credentials, so a run never waits on a login or network.

    W&B keeps its login in ``WANDB_API_KEY`` or in ``~/.netrc`` under its host; neither present (or
    ``WANDB_MODE=offline``) means offline. Offline runs are uploaded later with ``wandb sync``.
    """
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"} or not _wandb_logged_in():
        cfg.logger.wandb.offline = True


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
