"""Where a network and its data come from, for ``sdd-eval`` and ``sdd-export``.

- a run folder (``config_resolved.yaml``, ``checkpoints/``, ``results.json``): its best checkpoint, the student's
  and the teacher's architecture, its data config;
- a checkpoint file inside or outside a run folder, with a model card beside it (``<stem>.json``) or with
  ``--arch`` / ``--num-classes`` / ``--arch-kwarg`` options;
- the data: the run's or the card's data config, changed by ``data.<key>=...`` overrides, or any ``conf/data``
  option named with ``data=<name>``; and the one function that maps a split name to its batches.

Every bad input raises :class:`EvalError` (or the loaders' own error types, :data:`USER_ERRORS`) with a message
that names the input and the fix; so does an output that cannot be written (:func:`writing`).
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
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sdd_lightning.catalog import CONF_DIR
from sdd_lightning.errors import (
    CheckpointMismatchError,
    ClassCountMismatchError,
    DatasetError,
    EvalError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from sdd_lightning.models import build_model, get_classifier, load_weights
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
    "build_datamodule",
    "data_config",
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
        """Whether the run had a teacher (its checkpoints then hold ``teacher.*`` too)."""
        return self.config.get("method", "none") != "none"


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
        """The network with its weights, in eval mode; any bad input raises :class:`EvalError`."""
        num_classes = self.num_classes or data_classes
        try:
            model = build_model(self.arch, num_classes, **self.kwargs)
        except (KeyError, ValueError, TypeError, ImportError) as error:
            raise EvalError(f"cannot build --arch {self.arch} with options {self.kwargs}: {error}") from None
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


# ------------------------------------------------------------------------------------------------ data


def _compose_data(choice: str) -> DictConfig:
    """The ``data`` node of ``conf/train.yaml`` with ``data=<choice>`` (a file of ``conf/data/``), resolved."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"data={choice}"])
        return OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    except (HydraException, OmegaConfBaseException) as error:
        message = str(error).split("\nConfig search path")[0].strip()  # Hydra appends its search path
        raise EvalError(f"data={choice}: {message}") from None
    finally:
        GlobalHydra.instance().clear()


def data_config(overrides: Sequence[str], base: Mapping[str, Any] | None) -> DictConfig:
    """The data module's config: the ``conf/data`` option that ``data=<name>`` names, else ``base`` (a run's or a
    model card's), changed by the ``data.<key>=<value>`` overrides (any argument of the data module).

    Raises:
        EvalError: an override that is not about data, or no data set at all.
    """
    choices = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    settings = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("data.")]
    others = [o for o in overrides if not o.startswith("data=") and o.lstrip("+") not in settings]
    if others:
        raise EvalError(
            f"{others[0]!r}: sdd-eval takes data overrides only (data=<name>, data.<key>=<value>); other "
            "settings are options (sdd-eval --help)"
        )
    if choices:
        base = _compose_data(choices[-1])
    elif base is None:
        raise EvalError(
            "no data set to evaluate on: give data=<cifar100|cub200|imagenet|synthetic> (and data.root=...); "
            "only a run folder or a model card brings its own"
        )
    try:
        changes = OmegaConf.from_dotlist([o.removeprefix("data.") for o in settings])
        return OmegaConf.merge(OmegaConf.create(dict(base)), changes)
    except OmegaConfBaseException as error:
        raise EvalError(f"data overrides {' '.join(settings)}: {error}") from None


def build_datamodule(config: DictConfig) -> Any:
    """The data module a data config describes, ready for :func:`split_loader`."""
    try:
        datamodule = instantiate(config)
    except (HydraException, OmegaConfBaseException) as error:
        cause = error.__cause__ or error
        if isinstance(cause, DatasetError):
            raise cause from None
        raise EvalError(f"data={config.get('_target_')}: {cause}") from None
    datamodule.prepare_data()
    return datamodule


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
    """``["stem=imagenet", "width=2"]`` -> ``{"stem": "imagenet", "width": 2}`` (values parsed as YAML)."""
    for item in items:
        if "=" not in item:
            raise EvalError(f"--arch-kwarg {item}: expected KEY=VALUE, e.g. --arch-kwarg stem=imagenet")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))


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
