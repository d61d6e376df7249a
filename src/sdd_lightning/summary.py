"""``sdd-summary DIR``: the runs of a sweep as one table per setting, beside the published numbers.

Every run folder under DIR (a folder holding ``results.json`` or ``config_resolved.yaml``) is read and
grouped by setting: what was run apart from the seed (``setting`` of results.json, or data + teacher +
student + method for an ad-hoc run) plus the overrides that change what is computed. Each row gives, over
the setting's finished runs (seeds), mean ± standard deviation and n of the best-epoch and the last-epoch
validation top-1 and top-5, in percent, beside the published number and which of the two the paper
reports. Interrupted, failed and unfinished runs (no results.json: still running, or dead) are listed in
their row, never averaged in. A warning goes to stderr for every setting with fewer than three finished
seeds. Written into DIR (or ``--out``): ``summary.md``, ``summary.csv``, and two figures,
``summary_bars.png`` (best top-1 per setting beside the published number) and ``summary_curves.png``
(validation top-1 per epoch of every run).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MIN_SEEDS",
    "PRESENTATION_OVERRIDES",
    "Run",
    "SettingRow",
    "collect",
    "main",
    "read_curve",
    "summarize",
    "to_markdown",
]

# Overrides that change only how a run is shown or where its files are, never what it computes: runs
# that differ only in these are the same setting. Each entry is an override key; one ending in "."
# matches every key under it (``hydra.`` matches ``hydra.run.dir``). The group choices ``experiment``,
# ``pair`` and ``distill`` are listed because they are part of the setting's name already.
PRESENTATION_OVERRIDES: tuple[str, ...] = (
    "seed",  # the seeds are what a row averages over
    "hydra.",  # output folders, launcher and sweeper settings
    "hparams_search",  # the sweeper choice; the values it tries arrive as their own overrides
    "data.root",  # where the data set lies
    "data.num_workers",
    "data.pin_memory",
    "teacher.checkpoint",  # where the teacher's weights lie (the teacher is named by the setting)
    "ckpt_path",  # resuming
    "callbacks",  # progress bar, checkpoint cadence (e.g. callbacks=quiet)
    "callbacks.",
    "logger",  # csv / tensorboard / wandb
    "logger.",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "run_name",
    "tags",
    "experiment",  # already in the setting
    "pair",
    "distill",
)

# Fewer finished seeds than this and a setting's spread is not worth much: sdd-summary warns.
MIN_SEEDS = 3

# The four accuracies of a row: (label, results.json key); all are fractions in results.json.
METRICS: tuple[tuple[str, str], ...] = (
    ("best top-1", "val/acc1_best"),
    ("last top-1", "val/acc1"),
    ("best top-5", "val/acc5_best"),
    ("last top-5", "val/acc5"),
)
# What the SDD paper reports when a results.json does not say: the best epoch's top-1.
DEFAULT_PUBLISHED_METRIC = "best"

MARKDOWN_COLUMNS = (
    "setting",
    "n",
    "seeds",
    "best top-1 (%)",
    "last top-1 (%)",
    "best top-5 (%)",
    "last top-5 (%)",
    "published top-1 (%)",
    "ours - published (pp)",
    "epochs",
    "not averaged: unfinished / failed",
)


@dataclass
class Run:
    """One run folder: its status, the setting it belongs to, its seed, accuracies and validation curve.

    ``status`` is ``finished``, ``interrupted`` or ``failed`` (from results.json), or ``unfinished`` when the
    folder has no readable results.json (the run is still going, or died without writing one).
    """

    folder: Path
    status: str
    setting: str
    seed: int | None
    results: dict[str, Any] = field(default_factory=dict)
    published: float | None = None
    published_metric: str = DEFAULT_PUBLISHED_METRIC
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def percent(self, key: str) -> float | None:
        """An accuracy of results.json in percent (``None`` when the run did not record it)."""
        value = self.results.get(key)
        return None if value is None else 100.0 * float(value)


@dataclass
class SettingRow:
    """One setting: its finished runs (averaged) and the others (listed)."""

    setting: str
    finished: list[Run]
    others: list[Run]

    @property
    def n(self) -> int:
        return len(self.finished)

    @property
    def seeds(self) -> list[int | None]:
        return sorted((r.seed for r in self.finished), key=_seed_order)

    def stats(self, key: str) -> tuple[float, float | None, int] | None:
        """Mean, sample standard deviation (``None`` for one value) and count of an accuracy, in percent."""
        values = [v for v in (r.percent(key) for r in self.finished) if v is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)

    @property
    def published(self) -> float | None:
        return next((r.published for r in self.finished + self.others if r.published is not None), None)

    @property
    def published_metric(self) -> str:
        runs = self.finished + self.others
        return next((r.published_metric for r in runs if r.published is not None), DEFAULT_PUBLISHED_METRIC)

    def difference(self) -> float | None:
        """Our mean of the number the paper reports (best or last epoch top-1) minus the published one."""
        key = "val/acc1_best" if self.published_metric == "best" else "val/acc1"
        ours = self.stats(key)
        return None if ours is None or self.published is None else ours[0] - self.published

    @property
    def epochs(self) -> list[int]:
        return sorted({int(r.results["epochs"]) for r in self.finished if r.results.get("epochs") is not None})


def _seed_order(seed: int | None) -> tuple[bool, int]:
    return seed is None, seed or 0


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _is_presentation(override: str, ignored: tuple[str, ...] = PRESENTATION_OVERRIDES) -> bool:
    key = _override_key(override)
    return any(key.startswith(entry) if entry.endswith(".") else key == entry for entry in ignored)


def _fallback_name(data: Any, teacher: Any, student: Any, method: Any) -> str:
    """The name of an ad-hoc run's setting: data, teacher -> student, and method."""
    pair = f"{teacher} -> {student}" if teacher else f"{student}"
    return f"{data}: {pair} ({method})"


def _setting_key(name: str, overrides: list[str]) -> str:
    """The setting's name followed by its overrides that change what is computed, sorted."""
    extra = sorted(o for o in overrides if not _is_presentation(o))
    return " ".join([name, *extra])


def _name_from_results(results: dict[str, Any]) -> str:
    if results.get("setting"):
        return str(results["setting"])
    if results.get("experiment"):  # results.json files written before ``setting`` existed
        return str(results["experiment"])
    return _fallback_name(results.get("data"), results.get("teacher"), results.get("student"), results.get("distill"))


def _name_from_config(folder: Path, config: dict[str, Any]) -> str:
    """The setting's name of a run without results.json, from its resolved config and Hydra's record."""
    if config.get("setting"):
        return str(config["setting"])
    hydra_record = _read_yaml(folder / ".hydra" / "hydra.yaml") or {}
    choices = (hydra_record.get("hydra") or {}).get("runtime", {}).get("choices", {}) or {}
    if choices.get("experiment"):
        return str(choices["experiment"])
    if choices.get("pair"):
        return f"{choices['pair']}/{choices.get('distill')}"
    distill = (config.get("distill") or {}).get("method")
    data = str((config.get("data") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    teacher = (config.get("teacher") or {}).get("arch") if distill != "none" else None
    return _fallback_name(data, teacher, (config.get("student") or {}).get("arch"), distill)


def _read_yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def read_curve(folder: Path) -> list[tuple[int, float]]:
    """The validation top-1 (percent) per epoch of a run, from its CSV log; empty when there is none.

    Epochs are counted from 1 (the value after the first epoch is at 1). Training rows (no ``val/acc1``)
    are skipped; when an epoch appears twice (a resumed run), its last value is kept.
    """
    logs = sorted(folder.glob("csv/**/metrics.csv"))
    if not logs:
        return []
    points: dict[int, float] = {}
    with logs[-1].open(newline="") as f:
        for row in csv.DictReader(f):
            value, epoch = row.get("val/acc1"), row.get("epoch")
            if value and epoch:
                points[int(float(epoch)) + 1] = 100.0 * float(value)
    return sorted(points.items())


def _run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a results.json or a config_resolved.yaml."""
    found = {p.parent for name in ("results.json", "config_resolved.yaml") for p in root.rglob(name)}
    return sorted(f for f in found if "ranks" not in f.relative_to(root).parts)


def _load_run(folder: Path) -> tuple[Run, tuple[str, ...] | None]:
    """A run and the overrides it was started with, which link a run to its sweep (``None``: no link needed)."""
    results: dict[str, Any] | None = None
    results_path = folder / "results.json"
    if results_path.is_file():
        try:
            loaded = json.loads(results_path.read_text())
            results = loaded if isinstance(loaded, dict) else None
        except json.JSONDecodeError:
            results = None
        if results is None:
            print(f"sdd-summary: {results_path} is not a JSON object; the run is listed as unfinished", file=sys.stderr)
    curve = read_curve(folder)
    if results is not None:
        overrides = [str(o) for o in results.get("overrides") or []]
        run = Run(
            folder=folder,
            status=str(results.get("status") or "finished"),
            setting=_setting_key(_name_from_results(results), overrides),
            seed=results.get("seed"),
            results=results,
            published=results.get("published"),
            published_metric=results.get("published_metric") or DEFAULT_PUBLISHED_METRIC,
            curve=curve,
        )
        return run, tuple(sorted(overrides))
    config = _read_yaml(folder / "config_resolved.yaml") or {}
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])] if overrides_file.is_file() else []
    run = Run(
        folder=folder,
        status="unfinished",
        setting=_setting_key(_name_from_config(folder, config), overrides),
        seed=config.get("seed"),
        published=config.get("published"),
        curve=curve,
    )
    # a config that names its setting is the authority; otherwise the sweep's other runs may tell
    linkable = overrides_file.is_file() and not config.get("setting")
    return run, tuple(sorted(overrides)) if linkable else None


def collect(root: Path) -> list[Run]:
    """Every run under ``root``, finished or not, in folder order.

    A run without results.json whose config does not name its setting is given the setting of the runs
    with results.json that were started with the same overrides apart from the seed (its own sweep's
    other runs), when those agree on one; otherwise its setting is rebuilt from Hydra's record of it.
    """
    loaded = [_load_run(folder) for folder in _run_folders(root)]

    def signature(overrides: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(o for o in overrides if _override_key(o) != "seed")

    known: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for run, overrides in loaded:
        if run.results and overrides is not None:
            known[signature(overrides)].add(run.setting)
    for run, overrides in loaded:
        candidates = known.get(signature(overrides), set()) if overrides is not None and not run.results else set()
        if len(candidates) == 1:
            run.setting = next(iter(candidates))
    return [run for run, _ in loaded]


def summarize(runs: list[Run]) -> list[SettingRow]:
    """One row per setting, sorted by setting; finished runs averaged, the others kept apart."""
    groups: dict[str, SettingRow] = {}
    for run in runs:
        row = groups.setdefault(run.setting, SettingRow(run.setting, [], []))
        (row.finished if run.finished else row.others).append(run)
    return [groups[name] for name in sorted(groups)]


def _mean_std(stats: tuple[float, float | None, int] | None) -> str:
    if stats is None:
        return "n/a"
    mean, std, _ = stats
    return f"{mean:.2f} ± {'n/a' if std is None else f'{std:.2f}'}"


def _seed(seed: int | None) -> str:
    return "?" if seed is None else str(seed)


def _not_averaged(row: SettingRow) -> str:
    if not row.others:
        return ""
    others = sorted(row.others, key=lambda r: _seed_order(r.seed))
    listed = ", ".join(f"seed {_seed(r.seed)} {r.status}" for r in others)
    return f"{len(row.others)}: {listed}"


def _published(row: SettingRow) -> str:
    return "" if row.published is None else f"{row.published:.2f} ({row.published_metric} epoch)"


def to_markdown(rows: list[SettingRow]) -> str:
    """The rows as a GitHub-flavoured markdown table (accuracies in percent, mean ± sample std over seeds)."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for row in rows:
        diff = row.difference()
        cells = [
            row.setting.replace("|", "\\|"),
            str(row.n),
            ",".join(_seed(s) for s in row.seeds),
            *(_mean_std(row.stats(key)) for _, key in METRICS),
            _published(row),
            "" if diff is None else f"{diff:+.2f}",
            ",".join(str(e) for e in row.epochs),
            _not_averaged(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_rows(rows: list[SettingRow]) -> list[dict[str, Any]]:
    """The rows with plain numbers, one column per mean and per standard deviation."""
    table = []
    for row in rows:
        record: dict[str, Any] = {"setting": row.setting, "n": row.n, "seeds": " ".join(_seed(s) for s in row.seeds)}
        for label, key in METRICS:
            stats = row.stats(key)
            name = label.replace(" ", "_").replace("-", "")
            record[f"{name}_mean"] = "" if stats is None else round(stats[0], 4)
            record[f"{name}_std"] = "" if stats is None or stats[1] is None else round(stats[1], 4)
        diff = row.difference()
        record |= {
            "published": "" if row.published is None else row.published,
            "published_metric": row.published_metric if row.published is not None else "",
            "ours_minus_published": "" if diff is None else round(diff, 4),
            "epochs": " ".join(str(e) for e in row.epochs),
            "not_averaged": "; ".join(f"seed {_seed(r.seed)} {r.status}: {r.folder}" for r in row.others),
        }
        table.append(record)
    return table


def warnings(rows: list[SettingRow]) -> list[str]:
    """The lines sdd-summary prints to stderr: too few seeds, a seed counted twice, runs left out."""
    lines = []
    for row in rows:
        if row.n < MIN_SEEDS:
            lines.append(
                f"sdd-summary: {row.setting}: n={row.n} < {MIN_SEEDS} seeds: the spread is not reliable; run seed=0,1,2"
            )
        repeated = sorted(_seed(s) for s, count in Counter(row.seeds).items() if count > 1)
        if repeated:
            lines.append(f"sdd-summary: {row.setting}: seed {','.join(repeated)} counted more than once")
        for run in row.others:
            lines.append(f"sdd-summary: {row.setting}: seed {_seed(run.seed)} {run.status}, not averaged: {run.folder}")
    return lines


def main(argv: list[str] | None = None) -> list[SettingRow]:
    """Command-line entry point of ``sdd-summary``: prints the table and writes it and the figures."""
    parser = argparse.ArgumentParser(prog="sdd-summary", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep folder (or any folder holding run folders)")
    parser.add_argument("--out", type=Path, default=None, help="where to write summary.md/.csv/.png (default: DIR)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        raise SystemExit(f"sdd-summary: {args.directory} is not a folder: give the folder of a sweep or a run")
    runs = collect(args.directory)
    if not runs:
        raise SystemExit(
            f"sdd-summary: no run folder (results.json or config_resolved.yaml) under {args.directory}; "
            "give the folder sdd-train wrote (outputs/<task>/runs/... or .../multiruns/...)"
        )
    rows = summarize(runs)
    markdown = to_markdown(rows)
    out = args.out or args.directory
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(markdown)
    table = _csv_rows(rows)
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    from sdd_lightning.summary_plots import plot_summary

    written = [out / "summary.md", out / "summary.csv", *plot_summary(rows, out)]
    print(markdown, flush=True)
    for line in warnings(rows):
        print(line, file=sys.stderr, flush=True)
    print(f"{len(runs)} runs; written to {', '.join(str(p) for p in written)}")
    return rows


if __name__ == "__main__":
    main()
