"""The catalogue of published settings: what each is called, how to compose it, and the paper's number.

A *setting* is what a run computes apart from its seed. The paper's settings are named

- ``<data>/<pair>/<method>`` for ``sdd-train pair=<data>/<pair> distill=<method>`` (a teacher-student pair of
  ``conf/pair/`` with one of the methods of ``conf/distill/``), and
- an experiment's name for ``sdd-train experiment=<name>`` (ablations, teachers, baselines: ``conf/experiment/``).

``conf/published.yaml`` holds the published top-1 (and top-5 where published) of every one of them, in one table,
each with its source: ``sdd-train`` writes the numbers of its setting into ``results.json``, and ``sdd-summary`` and
``docs/recipes.md`` show them beside ours. A setting of the official configs with no published number is listed
with ``null``.
The logit-standardization settings (``cifar100/ls/...``) carry the LS paper's number where it reports one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from sdd_lightning.errors import did_you_mean

__all__ = [
    "CONF_DIR",
    "GROUPS",
    "PUBLISHED_METRIC",
    "compose_setting",
    "published",
    "published_numbers",
    "published_top1",
    "published_top5",
    "setting_name",
    "setting_names",
    "setting_overrides",
    "unknown_group_option",
]

CONF_DIR = Path(__file__).resolve().parent / "conf"
PUBLISHED_FILE = CONF_DIR / "published.yaml"
PUBLISHED_METRIC = "best"
"""Which epoch the paper's numbers are: the best test top-1 of all epochs, as the official trainer reports."""


PUBLISHED_METRICS = ("top1", "top5")


def _entry(name: str, value: object) -> dict[str, float]:
    """One row of ``conf/published.yaml``: a top-1, ``null`` (nothing published) or ``{top1: .., top5: ..}``."""
    if value is None:
        return {}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"top1": float(value)}
    numbers = isinstance(value, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    )
    if numbers and value and set(value) <= set(PUBLISHED_METRICS):
        return {str(k): float(v) for k, v in value.items()}
    raise ValueError(f"{PUBLISHED_FILE}: {name}: expected a top-1, null or {{top1: .., top5: ..}}, got {value!r}")


@functools.cache
def published_numbers() -> dict[str, dict[str, float]]:
    """Every setting of ``conf/published.yaml`` with its published numbers (%) by metric (``top1``, ``top5``).

    A setting with nothing published maps to ``{}``; one with only a top-5 published has no ``top1``.
    """
    table = yaml.safe_load(PUBLISHED_FILE.read_text()) or {}
    return {str(name): _entry(str(name), value) for name, value in table.items()}


def published() -> dict[str, float | None]:
    """Every setting of ``conf/published.yaml`` with its published top-1 (%), ``None`` where none is published."""
    return {name: numbers.get("top1") for name, numbers in published_numbers().items()}


@functools.cache
def setting_names() -> tuple[str, ...]:
    """Every catalogued setting, sorted, with or without a published number."""
    return tuple(sorted(published_numbers()))


def published_top1(setting: str | None) -> float | None:
    """The published top-1 (%) of a setting, or ``None`` when none is published."""
    return published_numbers().get(setting, {}).get("top1") if setting else None


def published_top5(setting: str | None) -> float | None:
    """The published top-5 (%) of a setting, or ``None`` when none is published."""
    return published_numbers().get(setting, {}).get("top5") if setting else None


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
                hint = did_you_mean(option, known, cutoff=0.5, any_case=False)
                listing = ", ".join(known) if len(known) <= 12 else f"{len(known)} options under conf/{key}/"
                return f"unknown {key} {option!r}.{hint} Known: {listing}"
    return None
