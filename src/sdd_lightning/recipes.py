"""The recipe table: every published setting's values, read from the composed configs, as ``docs/recipes.md``.

    python -m sdd_lightning.recipes            # rewrite docs/recipes.md from conf/
    python -m sdd_lightning.recipes --check    # exit 1 when docs/recipes.md differs from what conf/ composes

The table is generated, never written by hand: a test regenerates it and fails when the committed file differs,
so any change of a recipe value shows as a reviewed diff of ``docs/recipes.md``. Values that are one reading of
ambiguous official code carry their evidence (the configs' ``evidence`` entries) as footnotes.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

__all__ = ["COLUMNS", "compose_setting", "main", "recipe_rows", "render", "settings"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
TABLE_PATH = PROJECT_ROOT / "docs" / "recipes.md"

COLUMNS = (
    "setting",
    "data",
    "teacher",
    "student",
    "method",
    "epochs",
    "batch",
    "LR",
    "milestones",
    "WD",
    "T",
    "CE",
    "KD",
    "DKD α/β",
    "NKD γ",
    "warm-up",
    "M",
    "β",
    "consistency",
    "pooling",
    "published",
    "evidence",
)

# The base loss's settings that a method uses; the others are shown as "-".
_TAKES = {"kd": {"temperature"}, "dkd": {"temperature", "alpha", "beta"}, "nkd": {"temperature", "gamma"}}


def settings(conf_dir: Path = CONF_DIR) -> list[str]:
    """The experiments that record a published number: every setting of the paper, in file order."""
    root = conf_dir / "experiment"
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return [name for name in names if not name.startswith("quickstart/")]


def compose_setting(name: str, conf_dir: Path = CONF_DIR) -> DictConfig:
    """The config ``sdd-train experiment=<name>`` runs (without Hydra's runtime: nothing is resolved here)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}"])


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _evidence(cfg: DictConfig) -> dict[str, str]:
    """The evidence entries of a setting: the method's, then the setting's own (which may null the method's)."""
    merged = dict(cfg.distill.get("evidence") or {}) | dict(cfg.get("evidence") or {})
    return {key: " ".join(str(text).split()) for key, text in merged.items() if text}


def _row(name: str, cfg: DictConfig, footnotes: dict[str, int]) -> dict[str, str]:
    d = cfg.distill
    distilling = d.method != "none"
    base = d.get("base") if distilling else None
    takes = _TAKES.get(base, set())
    scheduler = cfg.get("scheduler") or {}
    milestones = scheduler.get("milestones")
    if milestones is None:
        milestones = str(scheduler.get("_target_", "constant")).rsplit(".", 1)[-1]
    devices = cfg.trainer.get("devices", 1)
    batch = f"{cfg.data.batch_size} x {devices}" if isinstance(devices, int) and devices > 1 else cfg.data.batch_size
    evidence = _evidence(cfg)
    for key in evidence:
        footnotes.setdefault(key, len(footnotes) + 1)
    return {
        "setting": name,
        "data": name.split("/", 1)[0],
        "teacher": cfg.teacher.arch if distilling else "-",
        "student": cfg.student.arch,
        "method": d.method,
        "epochs": _number(cfg.epochs),
        "batch": _number(batch),
        "LR": _number(cfg.optimizer.lr),
        "milestones": ", ".join(map(str, milestones)) if not isinstance(milestones, str) else milestones,
        "WD": _number(cfg.optimizer.weight_decay),
        "T": _number(d.temperature) if "temperature" in takes else "-",
        "CE": _number(d.ce_weight) if distilling else "1",
        "KD": _number(d.kd_weight) if distilling else "-",
        "DKD α/β": f"{_number(d.alpha)} / {_number(d.beta)}" if "beta" in takes else "-",
        "NKD γ": _number(d.gamma) if "gamma" in takes else "-",
        "warm-up": _number(d.warmup_epochs) if distilling else "-",
        "M": "{" + ", ".join(map(str, d.scales)) + "}" if distilling else "-",
        "β": _number(d.complementary_weight) if distilling and len(d.scales) > 1 else "-",
        "consistency": d.consistency if distilling and len(d.scales) > 1 else "-",
        "pooling": d.pooling if distilling and len(d.scales) > 1 else "-",
        "published": f"{cfg.published:.2f}" if cfg.get("published") is not None else "-",
        "evidence": ", ".join(f"[{footnotes[key]}]" for key in sorted(evidence, key=footnotes.get)),
    }


def recipe_rows(conf_dir: Path = CONF_DIR) -> tuple[list[dict[str, str]], dict[str, str]]:
    """One row per setting, and the evidence texts by key (numbered in order of first use)."""
    footnotes: dict[str, int] = {}
    texts: dict[str, str] = {}
    rows = []
    for name in settings(conf_dir):
        cfg = compose_setting(name, conf_dir)
        texts |= _evidence(cfg)
        rows.append(_row(name, cfg, footnotes))
    return rows, {key: texts[key] for key in sorted(footnotes, key=footnotes.get)}


def _lines(rows: list[dict[str, str]]) -> Iterator[str]:
    yield "| " + " | ".join(COLUMNS) + " |"
    yield "|" + "---|" * len(COLUMNS)
    for row in rows:
        yield "| " + " | ".join(row[c] for c in COLUMNS) + " |"


def render(rows: list[dict[str, str]], evidence: dict[str, str]) -> str:
    """``docs/recipes.md``: the table and its numbered evidence."""
    header = [
        "# Recipes",
        "",
        "Generated by `python -m sdd_lightning.recipes` from the composed configs (`sdd-train experiment=<setting>`);",
        "do not edit by hand. A test regenerates it, so a changed recipe value shows here as a diff.",
        "",
        "Batch is per device (x devices where there are several). T, α/β and γ are shown for the base loss that",
        "uses them; β (the weight of complementary regions), the consistency rule and the pooling only matter when",
        "M has more than one scale. Warm-up is in epochs, counted from 1 as in the official trainer. Published:",
        "top-1 (%) of the SDD paper, best epoch. Where a value is one reading of ambiguous official code, the last",
        "column points to the evidence below. README.md's section *Fidelity* lists the deliberate differences",
        "from the official code.",
        "",
    ]
    notes = ["", "## Evidence", ""] + [f"{i}. `{key}`: {text}" for i, (key, text) in enumerate(evidence.items(), 1)]
    return "\n".join([*header, *_lines(rows), *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Writes (or with ``--check`` compares) ``docs/recipes.md``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sdd_lightning.recipes", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed table instead of writing")
    parser.add_argument("--out", type=Path, default=TABLE_PATH, help="where the table lives (default: docs/recipes.md)")
    args = parser.parse_args(argv)
    table = render(*recipe_rows())
    if not args.check:
        args.out.write_text(table)
        print(f"wrote {args.out}")
        return 0
    current = args.out.read_text() if args.out.is_file() else ""
    if current == table:
        return 0
    diff = difflib.unified_diff(current.splitlines(), table.splitlines(), "committed", "composed", lineterm="")
    print("\n".join(diff))
    print(f"\n{args.out} is out of date: run `python -m sdd_lightning.recipes` and review the diff", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
