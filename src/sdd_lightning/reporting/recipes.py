"""The recipe table: every catalogued setting's values, read from the composed configs, as ``docs/recipes.md``.

    python -m sdd_lightning.reporting.recipes            # rewrite docs/recipes.md from conf/
    python -m sdd_lightning.reporting.recipes --check    # exit 1 when docs/recipes.md differs from what conf/ composes

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

from omegaconf import DictConfig, OmegaConf

from sdd_lightning.catalog import CONF_DIR, compose_setting, published_numbers, setting_names

__all__ = ["COLUMNS", "main", "recipe_rows", "render"]

# docs/ of a source checkout (the table is regenerated there, not in an installed package)
TABLE_PATH = Path(__file__).resolve().parents[3] / "docs" / "recipes.md"
NO_PUBLISHED_NUMBER = "no published number"

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
    "NKD soft term",
    "LS",
    "warm-up",
    "M",
    "β",
    "consistency",
    "pooling",
    "precision",
    "published",
    "evidence",
)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _nkd_soft_term(loss: dict[str, Any]) -> str:
    """Which classes NKD's soft term runs over: all of them (the official code) or all but the target."""
    if "exclude_target" not in loss:
        return "-"
    return "target excluded" if loss["exclude_target"] else "all classes"


def _evidence(cfg: DictConfig) -> dict[str, str]:
    """The evidence entries of a setting, by topic (whitespace normalised)."""
    return {key: " ".join(str(text).split()) for key, text in (cfg.get("evidence") or {}).items() if text}


def _row(name: str, cfg: DictConfig, footnotes: dict[str, int]) -> dict[str, str]:
    d = cfg.distill
    distilling = cfg.method != "none"
    loss = OmegaConf.to_container(d.loss, resolve=True) if distilling else {}
    regions = distilling and len(d.scales) > 1
    scheduler = cfg.get("scheduler") or {}
    milestones = scheduler.get("milestones")
    if milestones is None:
        milestones = str(scheduler.get("_target_", "constant")).rsplit(".", 1)[-1]
    devices = cfg.trainer.get("devices", 1)
    batch = f"{cfg.data.batch_size} x {devices}" if isinstance(devices, int) and devices > 1 else cfg.data.batch_size
    evidence = _evidence(cfg)
    for key in evidence:
        footnotes.setdefault(key, len(footnotes) + 1)
    paper = published_numbers().get(name, {})
    shown = "/".join(f"{paper[m]:.2f}" for m in ("top1", "top5") if m in paper)
    return {
        "setting": name,
        "data": name.split("/", 1)[0],
        "teacher": cfg.teacher.arch if distilling else "-",
        "student": cfg.student.arch,
        "method": cfg.method,
        "epochs": _number(cfg.epochs),
        "batch": _number(batch),
        "LR": _number(cfg.optimizer.lr),
        "milestones": ", ".join(map(str, milestones)) if not isinstance(milestones, str) else milestones,
        "WD": _number(cfg.optimizer.weight_decay),
        "T": _number(loss.get("temperature")),
        "CE": _number(d.ce_weight) if distilling else "1",
        "KD": _number(d.kd_weight) if distilling else "-",
        "DKD α/β": f"{_number(loss['alpha'])} / {_number(loss['beta'])}" if "beta" in loss else "-",
        "NKD γ": _number(loss.get("gamma")),
        "NKD soft term": _nkd_soft_term(loss),
        "LS": "yes" if loss.get("standardize") else "-",
        "warm-up": _number(d.warmup_epochs) if distilling else "-",
        "M": "{" + ", ".join(map(str, d.scales)) + "}" if distilling else "-",
        "β": _number(d.complementary_weight) if regions else "-",
        "consistency": d.consistency if regions else "-",
        "pooling": d.pooling if regions else "-",
        "precision": str(cfg.trainer.precision),
        "published": shown or NO_PUBLISHED_NUMBER,
        "evidence": ", ".join(f"[{footnotes[key]}]" for key in sorted(evidence, key=footnotes.get)),
    }


def recipe_rows(conf_dir: Path = CONF_DIR) -> tuple[list[dict[str, str]], dict[str, str]]:
    """One row per setting, and the evidence texts by key (numbered in order of first use)."""
    footnotes: dict[str, int] = {}
    texts: dict[str, str] = {}
    rows = []
    for name in setting_names():
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
        "Generated by `python -m sdd_lightning.reporting.recipes` from the composed configs of every setting of the "
        "catalogue",
        "(conf/published.yaml): `<data>/<pair>/<method>` is `sdd-train pair=<data>/<pair> distill=<method>`,",
        "other names are `sdd-train experiment=<name>`. Do not edit by hand: a test regenerates it, so a changed",
        "recipe value shows here as a diff.",
        "",
        "Batch is per device (x devices where there are several). T, α/β and γ are shown for the base loss that",
        "uses them; β (the weight of complementary regions), the consistency rule and the pooling only matter when",
        "M has more than one scale. NKD soft term: `all classes` is the official code's (its non-target mask keeps",
        "the target class), `target excluded` is NKD as defined (`distill.loss.exclude_target=true`). Warm-up is in",
        "epochs, counted from 1 as in the official trainer. Precision is `trainer.precision` with the setting's own",
        "trainer (`trainer=cpu` unless the recipe names one). Published: top-1 (%), best epoch, and top-5 after a",
        'slash where it is published; "no published number" where no source reports the setting. Each',
        "number's source is cited in conf/published.yaml. Where a value is one reading of ambiguous official code,",
        "the last column points to the evidence below. README.md's section *Fidelity* lists the deliberate",
        "differences from the official code. LS: logit standardization of both networks' logits, per region,",
        "before the base loss (`distill.loss.standardize`); the `cifar100/ls/` settings' published numbers are the",
        "LS paper's (Sun et al., CVPR 2024).",
        "",
    ]
    notes = ["", "## Evidence", ""] + [f"{i}. `{key}`: {text}" for i, (key, text) in enumerate(evidence.items(), 1)]
    return "\n".join([*header, *_lines(rows), *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Writes (or with ``--check`` compares) ``docs/recipes.md``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sdd_lightning.reporting.recipes", description=__doc__.splitlines()[0]
    )
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
    print(
        f"\n{args.out} is out of date: run `python -m sdd_lightning.reporting.recipes` and review the diff",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
