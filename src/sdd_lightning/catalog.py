"""The catalogue of published settings: what each is called, how to compose it, and the paper's number.

A *setting* is what a run computes apart from its seed. The paper's settings are named

- ``<data>/<pair>/<method>`` for ``sdd-train pair=<data>/<pair> distill=<method>`` (a teacher-student pair of
  ``conf/pair/`` with one of the methods of ``conf/distill/``), and
- an experiment's name for ``sdd-train experiment=<name>`` (ablations, teachers, baselines: ``conf/experiment/``).

``conf/published.yaml`` holds the SDD paper's top-1 of every one of them, in one table: ``sdd-train`` writes the
number of its setting into ``results.json``, and ``sdd-summary`` and ``docs/recipes.md`` show it beside ours. The
logit-standardization settings (``cifar100/ls/...``) carry the LS paper's number where it reports one; a setting
that no paper reports is listed with ``null`` ("no published number"), so that it is still catalogued and shown.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

__all__ = [
    "CONF_DIR",
    "GROUPS",
    "PUBLISHED_METRIC",
    "compose_setting",
    "published",
    "published_top1",
    "setting_name",
    "setting_names",
    "setting_overrides",
    "unknown_group_option",
]

CONF_DIR = Path(__file__).resolve().parent / "conf"
PUBLISHED_FILE = CONF_DIR / "published.yaml"
PUBLISHED_METRIC = "best"
"""Which epoch the paper's numbers are: the best test top-1 of all epochs, as the official trainer reports."""


def _read_table() -> dict[str, float | None]:
    """Every setting of ``conf/published.yaml`` with its top-1 (%), ``None`` where none is published."""
    table = yaml.safe_load(PUBLISHED_FILE.read_text()) or {}
    return {str(name): None if value is None else float(value) for name, value in table.items()}


@functools.cache
def published() -> dict[str, float]:
    """The paper's top-1 (%) by setting name, from ``conf/published.yaml`` (the settings that have one)."""
    return {name: top1 for name, top1 in _read_table().items() if top1 is not None}


@functools.cache
def setting_names() -> tuple[str, ...]:
    """Every catalogued setting, sorted: those of :func:`published` and those with no published number."""
    return tuple(sorted(_read_table()))


def published_top1(setting: str | None) -> float | None:
    """The paper's top-1 (%) of a setting, or ``None`` when the paper reports none."""
    return published().get(setting) if setting else None


def setting_name(choices: Mapping[str, str | None]) -> str | None:
    """The setting a run computes, from its Hydra group choices (``experiment``, ``pair``, ``distill``).

    An experiment names the setting; otherwise a pair and its method do; a run with neither is ad hoc (``None``).
    """
    if choices.get("experiment"):
        return str(choices["experiment"])
    if choices.get("pair"):
        return f"{choices['pair']}/{choices.get('distill') or 'none'}"
    return None


def setting_overrides(name: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The ``sdd-train`` overrides that run a setting: ``[pair=..., distill=...]`` or ``[experiment=...]``."""
    pair, _, method = name.rpartition("/")
    if (conf_dir / "pair" / f"{pair}.yaml").is_file() and (conf_dir / "distill" / f"{method}.yaml").is_file():
        return [f"pair={pair}", f"distill={method}"]
    if (conf_dir / "experiment" / f"{name}.yaml").is_file():
        return [f"experiment={name}"]
    raise ValueError(
        f"unknown setting {name!r}: expected <data>/<pair>/<method> with conf/pair/<data>/<pair>.yaml and "
        f"conf/distill/<method>.yaml, or the name of a file under conf/experiment/"
    )


def compose_setting(name: str, conf_dir: Path = CONF_DIR, extra: list[str] | None = None) -> DictConfig:
    """The config ``sdd-train`` runs for a setting (Hydra's runtime is not set up: nothing is resolved here)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        return compose("train", overrides=[*setting_overrides(name, conf_dir), *(extra or [])])


GROUPS = ("experiment", "pair", "distill", "loss", "data", "trainer", "optimizer", "scheduler", "callbacks", "logger")
"""The config groups whose options a command line names (``pair=cifar100/res32x4_shv1``)."""


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: its YAML files, relative to the group folder, without ``.yaml``."""
    root = conf_dir / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def unknown_group_option(overrides: list[str], conf_dir: Path = CONF_DIR) -> str | None:
    """A message for the first override that names a config group option that does not exist, else ``None``.

    Hydra's own message lists every option; this one names the closest ones, e.g. ``unknown pair
    'cifar100/res32x4_shv' ... Did you mean 'cifar100/res32x4_shv1' or 'cifar100/res32x4_shv2'?``. Sweeps
    (``distill=kd,sd_kd``) and lists (``logger=[csv,wandb]``) are checked value by value.
    """
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if not sep or key not in GROUPS or value in ("", "null"):
            continue
        known = group_options(key, conf_dir)
        for option in value.strip("[]").split(","):
            option = option.strip()
            if option and option not in known:
                close = difflib.get_close_matches(option, known, n=3, cutoff=0.5)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                listing = ", ".join(known) if len(known) <= 12 else f"{len(known)} options under conf/{key}/"
                return f"unknown {key} {option!r}.{hint} Known: {listing}"
    return None
