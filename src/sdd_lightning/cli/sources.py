"""What ``sdd-eval`` and ``sdd-export`` work on: a run or a weights file, its networks, and the config of its data.

- a run folder (``config_resolved.yaml``, ``checkpoints/``, ``results.json``): its best checkpoint and its saved
  config, which names the student and the teacher;
- a checkpoint file inside or outside a run folder, with a model card beside it (``<stem>.json``) or with
  ``--arch`` / ``--num-classes`` / ``--arch-kwarg`` options;
- the config to build from (:func:`compose_config`): the run's saved config, or ``sdd-train``'s ``train`` config
  with the card's data, composed by Hydra's compose API with the user's ``data=<name>`` / ``data.<key>=...``
  overrides, exactly as ``sdd-train`` composes them. Nothing here builds objects: the data module and the networks
  come from :mod:`sdd_lightning.builders`, the builders ``sdd-train`` uses (:meth:`NetworkSpec.build`
  adds loading the weights from the file being evaluated);
- the one function that maps a split name to its batches.

Every bad input raises :class:`EvalError` (or one of :data:`USER_ERRORS`, such as the builders'
:class:`ConfigError`) with a message that names the input and the fix; so does an output that cannot be
written (:func:`writing`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sdd_lightning.builders import build_network, is_distillation
from sdd_lightning.catalog import CONF_DIR, unknown_group_option
from sdd_lightning.errors import (
    CheckpointMismatchError,
    ClassCountMismatchError,
    ConfigError,
    DatasetError,
    EvalError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from sdd_lightning.models import get_classifier, load_weights
from sdd_lightning.models.fold_bn import fold_batchnorm
from sdd_lightning.reporting.model_card import find_model_card, unwritable_output

__all__ = [
    "RUN_CONFIG",
    "SPLITS",
    "USER_ERRORS",
    "EvalError",
    "NetworkSpec",
    "Run",
    "add_network_options",
    "compose_config",
    "data_overrides",
    "find_run",
    "network_specs",
    "parse_arch_kwargs",
    "split_inputs",
    "split_loader",
    "writing",
]

RUN_CONFIG = "config_resolved.yaml"
SPLITS = ("test", "val", "train")
USER_ERRORS = (
    FileNotFoundError,
    ConfigError,
    UnsafeCheckpointError,
    UnreadableCheckpointError,
    CheckpointMismatchError,
    DatasetError,
)


# ------------------------------------------------------------------------------------ what to evaluate


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run's folder: its resolved config and, when written, its ``results.json``."""

    dir: Path
    config: DictConfig
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_distillation(self) -> bool:
        """Whether the run had a teacher (its checkpoints then hold ``teacher.*`` too), as ``sdd-train`` decided it."""
        return is_distillation(self.config)


def _read_run(run_dir: Path) -> Run:
    config = OmegaConf.load(run_dir / RUN_CONFIG)
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    return Run(run_dir, config, results)


def _best_checkpoint(run: Run) -> Path:
    """The run's best checkpoint (the one ``results.json`` names, else the best by the accuracy in its name),
    else its ``last.ckpt``."""
    folder = run.dir / "checkpoints"
    named = Path(run.results.get("best_checkpoint") or "").name
    best = sorted(folder.glob("best-*.ckpt"), key=lambda path: path.stem.rpartition("acc")[2])
    for candidate in [folder / named] * bool(named) + best[-1:] + [folder / "last.ckpt"]:
        if candidate.is_file():
            return candidate
    raise EvalError(f"run folder {run.dir} has no checkpoints/best-*.ckpt or last.ckpt: give a checkpoint file")


def find_run(path: str | Path) -> tuple[Path, Run | None]:
    """The checkpoint to evaluate and the run it belongs to (``None`` for a file outside a run folder).

    ``path`` may be a run folder (its best checkpoint is taken, else ``last.ckpt``) or a checkpoint file; a file
    under ``<run>/checkpoints/`` belongs to ``<run>``.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / RUN_CONFIG).is_file():
            raise EvalError(f"{path} is a folder but not a run folder (no {RUN_CONFIG}): give a checkpoint file")
        run = _read_run(path)
        return _best_checkpoint(run), run
    if not path.is_file():
        raise EvalError(f"checkpoint {str(path)!r} does not exist: give the path of a checkpoint file or run folder")
    run_dir = path.parent.parent
    if path.parent.name == "checkpoints" and (run_dir / RUN_CONFIG).is_file():
        return path, _read_run(run_dir)
    return path, None


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """One network to build and load: its role, architecture and where its weights come from.

    Attributes:
        role: ``"student"`` / ``"teacher"`` (parts of a distillation checkpoint) or ``"network"``.
        arch: a registered name (``build_model``).
        kwargs: constructor options (``stem``, ``weights``, ...).
        num_classes: class count of the weights, or ``None`` for the data set's.
        checkpoint: the weights file, or ``None`` (torchvision weights through ``kwargs["weights"]``).
        prefix: the part of a Lightning checkpoint to load (``"model"``, ``"teacher"``), ``None`` for other files.
        fold_batchnorm: the checkpoint holds this network with its BatchNorm folded (``runtime.fold_teacher_bn``).
    """

    role: str
    arch: str
    kwargs: dict[str, Any]
    num_classes: int | None = None
    checkpoint: Path | None = None
    prefix: str | None = None
    fold_batchnorm: bool = False

    def build(self, data_classes: int) -> nn.Module:
        """The network with its weights, in eval mode; any bad input raises :class:`EvalError`.

        Built by :func:`sdd_lightning.builders.build_network` from the config node ``{arch, kwargs}``, as
        ``sdd-train`` builds the student and the teacher; the weights are then loaded from :attr:`checkpoint`.
        """
        num_classes = self.num_classes or data_classes
        node = "teacher" if self.role == "teacher" else "student"
        config = OmegaConf.create({node: {"arch": self.arch, "kwargs": self.kwargs, "checkpoint": None}})
        try:
            model = build_network(config, node, num_classes)
        except ConfigError as error:
            raise EvalError(
                f"cannot build --arch {self.arch} with options {self.kwargs}: {error.__cause__ or error}"
            ) from None
        except OSError as error:  # torchvision fetching pretrained weights without a network
            raise EvalError(f"{self.arch} with {self.kwargs}: could not fetch the weights ({error})") from None
        if self.fold_batchnorm:
            fold_batchnorm(model)  # as DistillationModule(fold_teacher_bn=True) did before saving
        if self.checkpoint is not None:
            self._load(model, num_classes)
        classes = get_classifier(model).out_features
        if classes != data_classes:
            raise EvalError(
                f"the {self.role} ({self.arch}) predicts {classes} classes but the data set has {data_classes}: "
                f"evaluate it on the data set it was trained on (data=..., or --num-classes for a subset)"
            )
        return model.eval()

    def _load(self, model: nn.Module, num_classes: int) -> None:
        try:
            load_weights(model, self.checkpoint, prefix=self.prefix)
        except ClassCountMismatchError as error:
            raise EvalError(
                f"{self.checkpoint} holds a {self.arch} for {error.file_classes} classes, but the network was built "
                f"for {num_classes}: the class count differs. Fix: evaluate it on its own data set (data=... with "
                f"{error.file_classes} classes), or give --num-classes {error.file_classes} for a subset."
            ) from None
        except CheckpointMismatchError as error:
            raise EvalError(
                f"{error}\nFix: --arch <the file's architecture> (with --arch-kwarg stem=imagenet for the ImageNet "
                "stem), or another checkpoint for this architecture."
            ) from None


def _card_spec(card: Mapping[str, Any], checkpoint: Path) -> NetworkSpec:
    arch = card["architecture"]
    return NetworkSpec("network", arch["arch"], dict(arch.get("kwargs") or {}), arch.get("num_classes"), checkpoint)


def _role_spec(run: Run, role: str, checkpoint: Path) -> NetworkSpec:
    """The student (``model.*``) or teacher (``teacher.*``) of a run's Lightning checkpoint."""
    node = run.config.student if role == "student" else run.config.teacher
    kwargs = OmegaConf.to_container(node.kwargs, resolve=True) if node.get("kwargs") else {}
    kwargs.pop("weights", None)  # the checkpoint holds the weights; nothing is fetched again
    fold = role == "teacher" and bool(run.config.get("runtime", {}).get("fold_teacher_bn", False))
    prefix = "model" if role == "student" else "teacher"
    name = role if run.is_distillation else "network"
    return NetworkSpec(name, node.arch, kwargs, None, checkpoint, prefix, fold)


def network_specs(
    checkpoint: Path | None,
    run: Run | None,
    *,
    part: str = "student",
    arch: str | None = None,
    num_classes: int | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    both_parts: bool = False,
) -> list[NetworkSpec]:
    """The networks to evaluate, the chosen ``part`` first.

    Architecture and options come from ``arch`` / ``arch_kwargs`` when given, else from the checkpoint's run
    folder or its model card. ``both_parts`` adds the other part of a distillation checkpoint (for ``--regions``).
    """
    if part not in ("student", "teacher"):
        raise EvalError(f"--part {part}: choose student or teacher")
    card = find_model_card(checkpoint) if checkpoint is not None else None
    if arch is None and run is not None and checkpoint is not None and checkpoint.suffix == ".ckpt":
        if part == "teacher" and not run.is_distillation:
            raise EvalError(f"{checkpoint} is a distill=none checkpoint: it has no teacher (drop --part teacher)")
        roles = [part, *(["teacher" if part == "student" else "student"] if both_parts and run.is_distillation else [])]
        specs = [_role_spec(run, role, checkpoint) for role in roles]
    elif arch is None and card is not None:
        specs = [_card_spec(card, checkpoint)]
    elif arch is None:
        what = "a checkpoint outside a run folder, without a model card" if checkpoint else "nothing to evaluate"
        raise EvalError(
            f"{what}: give its architecture, e.g. --arch resnet32x4 (and --num-classes, --arch-kwarg stem=imagenet "
            "where they differ from the data set's), or a run folder; for torchvision weights: --arch "
            "imagenet_resnet50 --weights IMAGENET1K_V1"
        )
    else:
        prefix = part if part == "teacher" else None
        specs = [NetworkSpec(part if prefix else "network", arch, {}, None, checkpoint, prefix)]
    first = specs[0]
    kwargs = {**first.kwargs, **(arch_kwargs or {})}
    specs[0] = dataclasses.replace(first, kwargs=kwargs, num_classes=num_classes or first.num_classes)
    if checkpoint is None and "weights" not in kwargs:
        raise EvalError(
            f"--arch {arch} without a checkpoint: give a checkpoint file or --weights <torchvision weights>"
        )
    return specs


# ------------------------------------------------------------------------------------------------ config

SAVED_RUN = "sdd_saved_run"
"""The name under which a run's saved config is composed (Hydra's config store, in this process only)."""
SAVED_DATA = "sdd_saved_data"
"""The ``data`` option that holds a run's or a model card's saved data config (Hydra's config store)."""


def data_overrides(overrides: Sequence[str]) -> list[Override]:
    """``overrides`` read by Hydra's own override parser, each of which must be about the data.

    Raises:
        EvalError: an override Hydra cannot read, or one that is not ``data=<name>`` / ``data.<key>=<value>``
            (with ``+``/``++``/``~`` as for ``sdd-train``).
    """
    parser = OverridesParser.create()
    parsed = []
    for item in overrides:
        try:
            parsed += parser.parse_overrides([item])
        except HydraException as error:
            raise EvalError(f"{item}: {str(error).splitlines()[0]}") from None
    for override in parsed:
        if override.key_or_group != "data" and not override.key_or_group.startswith("data."):
            raise EvalError(
                f"{override.input_line!r}: sdd-eval takes data overrides only (data=<name>, data.<key>=<value>); "
                "other settings are options (sdd-eval --help)"
            )
    return parsed


def compose_config(
    overrides: Sequence[str], run: Run | None = None, card: Mapping[str, Any] | None = None
) -> DictConfig:
    """The config to build the data module from: the run's saved config (or ``sdd-train``'s ``train`` config), its
    data (the run's, the model card's, or the ``conf/data`` option ``data=<name>`` names) changed by ``overrides``.

    Composed by Hydra's compose API as ``sdd-train`` composes its config, so that an override means here what it
    means there: the saved data config is a ``data`` option of its own (the run's saved config names it in its
    defaults list), ``data=<name>`` replaces it, and ``data.<key>=...``, ``+data.<key>=...`` and ``~data.<key>``
    change it under Hydra's rules.

    Raises:
        EvalError: an override that is not about data or that Hydra refuses, or no data set at all.
    """
    chooses = any(override.key_or_group == "data" for override in data_overrides(overrides))
    store = ConfigStore.instance()
    saved = (card or {}).get("data", {}).get("config") if run is None else run.config.data
    if run is not None:
        body = {key: value for key, value in OmegaConf.to_container(run.config).items() if key != "data"}
        store.store(name=SAVED_RUN, node={"defaults": ["_self_", {"data": SAVED_DATA}], **body})
        primary, chosen = SAVED_RUN, []
    elif saved is not None or chooses:
        primary, chosen = "train", [] if chooses else [f"data={SAVED_DATA}"]
    else:
        raise EvalError(
            "no data set to evaluate on: give data=<cifar100|cub200|imagenet|synthetic> (and data.root=...); "
            "only a run folder or a model card brings its own"
        )
    if saved is not None:
        store.store(group="data", name=SAVED_DATA, node=OmegaConf.to_container(OmegaConf.create(saved)))
    unknown = unknown_group_option(list(overrides))
    if unknown:
        raise EvalError(unknown)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose(primary, overrides=[*chosen, *overrides])
    except (HydraException, OmegaConfBaseException) as error:
        message = str(error).split("\nConfig search path")[0].strip()  # Hydra appends its search path
        raise EvalError("\n".join(message.splitlines()[:2])) from None
    finally:
        GlobalHydra.instance().clear()


# ------------------------------------------------------------------------------------------------ data


def split_loader(datamodule: Any, split: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches of ``split``: ``test`` is the test split, ``val`` the validation set (the test split in
    the paper's protocol, the held-out training images with ``data.val_split``), ``train`` the training images
    (without the held-out ones) with the evaluation transform (no augmentation)."""
    if split not in SPLITS:
        raise EvalError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    if split == "test":
        datamodule.setup("test")
        return datamodule.test_dataloader()
    if split == "val":
        datamodule.setup("validate")
        return datamodule.val_dataloader()
    datamodule.setup("fit")
    return datamodule.train_eval_dataloader()


# ------------------------------------------------------------------------------------ command-line parts


def parse_arch_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["stem=imagenet", "width=2"]`` -> ``{"stem": "imagenet", "width": 2}``: each value read by Hydra's override
    parser, as ``student.kwargs.<key>=<value>`` is read by ``sdd-train``."""
    parser = OverridesParser.create()
    kwargs = OmegaConf.create()
    for item in items:
        expected = f"--arch-kwarg {item}: expected KEY=VALUE, e.g. --arch-kwarg stem=imagenet"
        if "=" not in item:
            raise EvalError(expected)
        try:
            (override,) = parser.parse_overrides([item])
        except HydraException:
            raise EvalError(expected) from None
        if override.is_sweep_override() or override.is_delete():
            raise EvalError(expected)
        OmegaConf.update(kwargs, override.key_or_group, override.value())
    return OmegaConf.to_container(kwargs)


def split_inputs(inputs: Sequence[str]) -> tuple[str | None, list[str]]:
    """The positional arguments as (checkpoint or ``None``, ``key=value`` overrides)."""
    paths = [item for item in inputs if "=" not in item]
    if len(paths) > 1:
        raise EvalError(f"one checkpoint at a time, got {', '.join(paths)}")
    return (paths[0] if paths else None), [item for item in inputs if "=" in item]


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """The options that say which network a file holds (shared by sdd-eval and sdd-export)."""
    parser.add_argument("--arch", help="architecture of a file outside a run folder (e.g. resnet32x4)")
    parser.add_argument("--num-classes", type=int, help="class count of the weights (default: the data set's)")
    parser.add_argument(
        "--arch-kwarg", action="append", default=[], metavar="KEY=VALUE", help="constructor option, e.g. stem=imagenet"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


@contextlib.contextmanager
def writing(option: str) -> Iterator[None]:
    """Within the block, an output that cannot be written (no permission, a full disk, ...) raises
    :class:`EvalError` with two lines that name the file and the fix (``option``, e.g. ``"--output-dir DIR"``)."""
    try:
        yield
    except OSError as error:
        message = unwritable_output(error, option)
        if message is None:
            raise
        raise EvalError(message) from error
