"""From a resolved Hydra config to the objects of one run, with early, actionable errors.

Every object is a config node with ``_target_``: the data module (``data``), the LightningModule with its base
loss (``distill``, ``distill.loss``), the optimiser and scheduler, callbacks and loggers. Building them is
``instantiate``; what this module adds is the networks (built by name and loaded from their checkpoints) and
turning the ``ValueError`` an owner raises for a bad value into a :class:`ConfigError` that names the override
that fixes it. Every check here runs before any data is read or any step is trained.
"""

from __future__ import annotations

import netrc
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sdd_lightning.catalog import published_top1
from sdd_lightning.data import datamodule_name
from sdd_lightning.data.in_memory import InMemoryImageDataModule
from sdd_lightning.errors import (
    ClassCountMismatchError,
    ConfigError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    did_you_mean,
)
from sdd_lightning.models import available_models, build_model, get_classifier, load_weights
from sdd_lightning.models.registry import ADAPTER_PREFIXES
from sdd_lightning.reporting.model_card import find_model_card
from sdd_lightning.training.module import ClassificationModule, DistillationModule

__all__ = [
    "ConfigError",
    "build_callbacks",
    "build_datamodule",
    "build_loggers",
    "build_module",
    "build_network",
    "check_accelerator",
    "check_config",
    "check_scales_fit",
    "configure_teacher_cache",
    "is_distillation",
]


def is_distillation(cfg: DictConfig) -> bool:
    """Whether the run's module distils from a teacher (its ``distill._target_`` is a ``DistillationModule``)."""
    target = cfg.distill.get("_target_")
    try:
        module_class = get_class(target)
    except Exception as error:  # Hydra raises ImportError or its own errors for a bad path
        raise ConfigError(
            f"distill._target_={target} cannot be imported ({error}); give a LightningModule class, e.g. "
            "distill._target_=sdd_lightning.training.module.DistillationModule or your own subclass "
            "(my_package.MyModule)"
        ) from None
    return issubclass(module_class, DistillationModule)


def check_config(cfg: DictConfig) -> None:
    """Checks what can be checked without building anything: names, epochs, teacher presence."""
    epochs = cfg.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r}: give the number of training epochs, an integer >= 1 (e.g. epochs=240)")
    known = available_models()
    distilling = is_distillation(cfg)
    for role in ("student", "teacher") if distilling else ("student",):
        arch = cfg[role].arch
        if arch is None:
            raise ConfigError(
                f"{role}.arch is not set: give {role}.arch=<name> (known: {', '.join(sorted(known))})"
                + ("" if role == "student" else ", or distill=none to train without a teacher")
            )
        if arch not in known and not arch.startswith(ADAPTER_PREFIXES) and "." not in arch:
            raise ConfigError(
                f"unknown {role}.arch={arch!r}.{did_you_mean(arch, known)} Known names: {', '.join(sorted(known))}; or "
                "'torchvision:<name>' / 'timm:<name>' for any torchvision or timm classifier, or the dotted path of "
                "your own network class (my_package.nets.MyNet)"
            )
    if not distilling:
        return
    pretrained = (cfg.teacher.get("kwargs") or {}).get("weights") is not None
    if cfg.teacher.checkpoint is None and not pretrained and not cfg.teacher.allow_random:
        raise ConfigError(
            f"distill={cfg.get('method')} needs trained teacher weights: give teacher.checkpoint=<file> "
            "(mdistiller/CRD .pth, a .ckpt of ours, or a state_dict) or teacher.kwargs.weights=<torchvision weights>; "
            "train one with sdd-train experiment=<data>/teacher_<arch> (then teacher.checkpoint=<its run>/checkpoints/"
            "best-*.ckpt), or set SDD_TEACHER_DIR to the folder of the CRD teachers; for a smoke run only, "
            "teacher.allow_random=true distils from a randomly initialised teacher"
        )
    if cfg.teacher.checkpoint is not None and not Path(cfg.teacher.checkpoint).is_file():
        raise ConfigError(
            f"teacher.checkpoint={cfg.teacher.checkpoint} does not exist: give the path of its weights; the CRD "
            "teachers are looked up under $SDD_TEACHER_DIR (<dir>/<arch>_vanilla/ckpt_epoch_240.pth for CIFAR-100), "
            "or train one with sdd-train experiment=<data>/teacher_<arch>"
        )


# Words that PyTorch's own messages use for a setting instead of its parameter name.
_ALIASES = {"learning rate": "lr", "momentum value": "momentum", "weight_decay value": "weight_decay"}


def _mentioned_keys(message: str, node: Mapping, prefix: str) -> list[tuple[int, str, Any]]:
    """(position in ``message``, override path, value) of every key of ``node`` (or a nested node) it names."""
    for words, key in _ALIASES.items():
        message = message.replace(words, key)
    found = []
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            found += _mentioned_keys(message, value, path)
        elif not str(key).startswith("_") and (match := re.search(rf"\b{re.escape(str(key))}\b", message)):
            found.append((match.start(), path, value))
    return found


def config_error(path: str, node: Any, error: BaseException) -> ConfigError:
    """A :class:`ConfigError` for a value that ``cfg[path]``'s owner refused, naming the override to change.

    Owners name the refused setting first in their message (``"temperature must be > 0, ..."``); the key of the
    node named first is the one to fix.
    """
    message = str(error).strip().removeprefix(f"{path}: ")
    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    named = _mentioned_keys(message, container, path) if isinstance(container, Mapping) else []
    if named:
        first = min(position for position, _, _ in named)
        keys = [(key, value) for position, key, value in named if position == first]
        where = ", ".join(f"{key}={value}" for key, value in keys)
        return ConfigError(f"{where}: {message} (fix: {' / '.join(key for key, _ in keys)}=<a valid value>)")
    return ConfigError(f"{path}: {message} (check the {path}.* overrides)")


def instantiate_node(path: str, node: Any, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with an owner's refusal of a value turned into a :class:`ConfigError`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, ValueError | TypeError):
            raise config_error(path, node, cause) from None
        raise ConfigError(f"{path}: {cause}") from None


def _call(cfg: DictConfig, factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Completes the module's partial; a refused value is reported against the node it came from."""
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as error:
        # the module tries the optimiser and scheduler factories once and says which refused
        path = next((p for p in ("optimizer", "scheduler") if str(error).startswith(f"{p}:")), "distill")
        raise config_error(path, cfg.get(path), error) from None


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
        except UnreadableCheckpointError as error:
            raise ConfigError(f"{role}.checkpoint={checkpoint}: {error}") from error
        except ClassCountMismatchError as error:
            raise ConfigError(
                f"{role}.checkpoint={checkpoint} holds a {node.arch} for {error.file_classes} classes, but the data "
                f"set has {num_classes}: the class count differs. Fix: {role}.checkpoint=<a {node.arch} trained on "
                "this data set>"
            ) from error
        except (RuntimeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"{role}.checkpoint={checkpoint} does not fit {role}.arch={node.arch} with {num_classes} classes:\n"
                f"{error}\nFix: {role}.arch=<the file's architecture> or {role}.checkpoint=<a file for {node.arch}>"
            ) from error
    try:
        classes = get_classifier(network).out_features
    except TypeError:
        return network  # outside the interface: a DistillationModule subclass's hooks give its classifier
    if classes != num_classes:
        raise ConfigError(
            f"{role} {node.arch} predicts {classes} classes but data={cfg.data._target_.rsplit('.', 1)[-1]} has "
            f"{num_classes}: use a {role}.checkpoint trained on this data set"
        )
    return network


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The run's data module (``cfg.data``); constructing it reads no data."""
    return instantiate_node("data", cfg.data)


def _factory(path: str, node: Any) -> Any:
    """A ``_partial_`` optimizer/scheduler node as a factory; an empty node means none."""
    if node is None or "_target_" not in node:
        return None
    return instantiate_node(path, node)


def build_module(cfg: DictConfig, num_classes: int) -> ClassificationModule:
    """The LightningModule of the run: ``instantiate(cfg.distill)`` with the networks, the solver and the switches.

    ``cfg.distill`` is a ``_partial_`` node of a ``ClassificationModule`` (``distill=none``) or of a
    ``DistillationModule`` or a subclass (``distill._target_=my_package.MyDistillation``), with its base loss
    under ``distill.loss``; this function builds the networks and completes the call.
    """
    student = build_network(cfg, "student", num_classes)
    factory = instantiate_node("distill", cfg.distill)
    common = {
        "num_classes": num_classes,
        "optimizer": _factory("optimizer", cfg.optimizer),
        "scheduler": _factory("scheduler", cfg.get("scheduler")),
        "channels_last": bool(cfg.runtime.channels_last),
        "compile": bool(cfg.runtime.compile),
    }
    if not is_distillation(cfg):
        return _call(cfg, factory, model=student, **common)
    teacher = build_network(cfg, "teacher", num_classes)
    return _call(
        cfg,
        factory,
        student=student,
        teacher=teacher,
        fold_teacher_bn=bool(cfg.runtime.fold_teacher_bn),
        teacher_expected_acc1=expected_teacher_acc1(cfg) if cfg.teacher.get("check", True) else None,
        teacher_acc1_margin=cfg.teacher.get("acc1_margin", 0.01),
        **_teacher_cache_options(cfg),
        **common,
    )


def _teacher_cache_options(cfg: DictConfig) -> dict[str, Any]:
    """The teacher view cache's arguments of a ``DistillationModule``, only when ``teacher.cache_dir`` is set."""
    if cfg.teacher.get("cache_dir") is None:
        return {}
    return {"teacher_cache_dir": str(cfg.teacher.cache_dir), "teacher_cache_dtype": str(cfg.teacher.cache_dtype)}


def configure_teacher_cache(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """With ``teacher.cache_dir``: refuses what cannot be cached exactly, and makes the batches carry their views.

    The cache is exact only where every training image is one of a finite set of views of a fixed image: the
    in-memory data modules (CIFAR-100, the synthetic set) with their crop-and-flip augmentation, on either
    pipeline. Image-file data sets (random-resized crops on ImageNet, crops of resized photos on CUB) and a
    replaced training transform are refused.
    """
    cache_dir = cfg.teacher.get("cache_dir")
    if cache_dir is None:
        return
    given = f"teacher.cache_dir={cache_dir}"
    if not is_distillation(cfg):
        raise ConfigError(f"{given}: distill={cfg.get('method')} has no teacher to cache; drop teacher.cache_dir")
    if str(cfg.teacher.get("cache_dtype")) not in ("float32", "float16"):
        raise ConfigError(
            f"teacher.cache_dtype={cfg.teacher.get('cache_dtype')}: use float32 (the exact logits) or float16 "
            "(half the disk, rounded targets)"
        )
    name = type(datamodule).__name__
    if not isinstance(datamodule, InMemoryImageDataModule):
        raise ConfigError(
            f"{given}: the cache is exact only for a finite set of views of in-memory images (CIFAR-100's crop with "
            f"padding 4 and flip: 162 per image), and {name} draws random-resized crops of image files; "
            "drop teacher.cache_dir"
        )
    if type(datamodule).train_transform is not InMemoryImageDataModule.train_transform:
        raise ConfigError(
            f"{given}: {name} replaces the training transform, so its views may fall outside the finite "
            "crop-and-flip set the cache is exact for; drop teacher.cache_dir"
        )
    path = Path(str(cache_dir)).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{given} is a file: give a folder (it is created if missing)")
    datamodule.with_views = True


def check_accelerator(cfg: DictConfig, trainer_choice: str | None = None) -> None:
    """Refuses a GPU trainer (``trainer=gpu``, ``trainer=ddp``) on a machine without CUDA, naming the CPU ones."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in {"gpu", "cuda"} and not torch.cuda.is_available():
        given = f"trainer={trainer_choice}" if trainer_choice else f"trainer.accelerator={accelerator}"
        raise ConfigError(
            f"{given} needs a CUDA GPU, and torch finds none on this machine: use trainer=cpu "
            "(or trainer=ddp_sim for a multi-process run on CPUs)"
        )


def _input_side(datamodule: L.LightningDataModule) -> int:
    """The side of the images the networks see: the data module's crop, else 32 (CIFAR, the synthetic set)."""
    return int(getattr(datamodule, "crop_size", None) or 32)


def check_scales_fit(module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Refuses a scale whose grid is finer than the student's or teacher's final feature map.

    Finds the maps' sides with one forward pass of a blank image in eval mode, without gradients, leaving
    BatchNorm statistics, training modes and the random generators as they were. Compiled networks are
    not run (their first call would compile them).
    """
    if not isinstance(module, DistillationModule) or max(module.head.scales) == 1:
        return
    if module.hparams.get("compile"):
        return
    side = _input_side(datamodule)
    image = torch.zeros(1, 3, side, side)
    modes = {m: m.training for m in module.modules()}
    sides = {}
    try:
        module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for role, features in (("student", module.student_features), ("teacher", module.teacher_features)):
                feature_map, _ = features(image)
                sides[role] = min(feature_map.shape[-2:])
    except Exception:  # a network that cannot run here fails in training with its own error
        return
    finally:
        for m, training in modes.items():
            m.training = training
    smallest = min(sides.values())
    too_large = [s for s in module.head.scales if s > smallest]
    if too_large:
        maps = ", ".join(f"the {role}'s is {s}x{s}" for role, s in sides.items())
        usable = [s for s in module.head.scales if s <= smallest]
        raise ConfigError(
            f"distill.scales={list(module.head.scales)}: scale {too_large[0]} is finer than the final feature map "
            f"of {side}x{side} images ({maps}): the largest usable side is {smallest}; e.g. distill.scales={usable}"
        )


def expected_teacher_acc1(cfg: DictConfig) -> float | None:
    """The top-1 (fraction) the teacher is known to have, or ``None`` when nothing is known.

    In order: ``teacher.expected_acc1``; the model card beside ``teacher.checkpoint`` (an ``sdd-export`` file,
    accuracy measured by ``sdd-eval``); the published accuracy of a CRD / mdistiller teacher file
    (``<arch>_vanilla/ckpt_epoch_240.pth``, ``conf/published.yaml``'s ``<data>/teacher_<arch>``).
    """
    if cfg.teacher.get("expected_acc1") is not None:
        return float(cfg.teacher.expected_acc1)
    checkpoint = cfg.teacher.get("checkpoint")
    if checkpoint is None:
        return None
    card = find_model_card(checkpoint)
    if card and (card.get("accuracy") or {}).get("acc1") is not None:
        return float(card["accuracy"]["acc1"])
    path = Path(checkpoint)
    data = datamodule_name(str(cfg.data._target_))  # the name the data module gives itself (published.yaml's)
    if data and path.name == "ckpt_epoch_240.pth" and path.parent.name == f"{cfg.teacher.arch}_vanilla":
        top1 = published_top1(f"{data}/teacher_{cfg.teacher.arch}")
        return None if top1 is None else top1 / 100
    return None


def _instantiate_group(path: str, node: Mapping | None) -> list[Any]:
    if not node:
        return []
    return [
        instantiate_node(f"{path}.{name}", entry)
        for name, entry in node.items()
        if entry is not None and "_target_" in entry
    ]


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (entries set to null are left out)."""
    return _instantiate_group("callbacks", cfg.get("callbacks"))


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The loggers of ``cfg.logger``; W&B goes offline when it has no credentials."""
    node = cfg.get("logger")
    if node and node.get("wandb") is not None:
        _wandb_offline_unless_logged_in(cfg)
    return _instantiate_group("logger", node)


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
