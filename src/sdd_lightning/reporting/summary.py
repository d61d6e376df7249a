"""The summary of many runs (what ``sdd-summary`` prints and writes): one row per setting, beside the published
numbers, with its files written atomically. The command line and its contract are in
:mod:`sdd_lightning.cli.summary`."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from sdd_lightning.errors import SummaryError
from sdd_lightning.reporting.model_card import unwritable_output, write_atomically
from sdd_lightning.reporting.plots import BARS_FILE, CURVES_FILE, plot_summary
from sdd_lightning.reporting.runs import DEFAULT_PUBLISHED_METRIC, Run, SettingRow, _seed_order

__all__ = [
    "MARKER",
    "MIN_SEEDS",
    "PRESENTATION_OVERRIDES",
    "Run",
    "SettingRow",
    "SummaryError",
    "collect",
    "failed_jobs",
    "read_curve",
    "summarize",
    "to_markdown",
    "write_summary",
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
    "teacher.cache_dir",  # the teacher view cache gives the live targets exactly (float32; cache_dtype is kept)
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

# The first line of every summary.md that sdd-summary writes: the files it may overwrite.
MARKER = "<!-- written by sdd-summary -->"
SUMMARY_FILES = ("summary.md", "summary.csv", BARS_FILE, CURVES_FILE)
# Runs listed below the table with their error (sdd-train writes these statuses with an "error" message).
LISTED_STATUSES = ("failed", "diverged")

# Fewer finished seeds than this and a setting's spread is not worth much: sdd-summary warns.
MIN_SEEDS = 3

# The four accuracies of a row: (label, results.json key); all are fractions in results.json.
METRICS: tuple[tuple[str, str], ...] = (
    ("best top-1", "val/acc1_best"),
    ("last top-1", "val/acc1"),
    ("best top-5", "val/acc5_best"),
    ("last top-5", "val/acc5"),
)

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
    "published top-5 (%)",
    "epochs",
    "not averaged: unfinished / failed / diverged",
)


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _is_presentation(override: str, ignored: tuple[str, ...] = PRESENTATION_OVERRIDES) -> bool:
    key = _override_key(override)
    return any(key.startswith(entry) if entry.endswith(".") else key == entry for entry in ignored)


def _fallback_name(data: Any, teacher: Any, student: Any, method: Any) -> str:
    """The name of an ad-hoc run's setting: data, teacher -> student, and method."""
    pair = f"{teacher} -> {student}" if teacher else f"{student}"
    return f"{data}: {pair} ({method})"


def _seed_override(overrides: list[str]) -> int | None:
    """The seed a run was started with, from its overrides (``seed=3``), or ``None``."""
    seeds = [o.split("=", 1)[1] for o in overrides if _override_key(o) == "seed" and "=" in o]
    return int(seeds[-1]) if seeds and seeds[-1].lstrip("-").isdigit() else None


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
    if not config:
        return "(setting unknown)"
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


def _load_run(folder: Path) -> tuple[Run, tuple[str, ...] | None, bool]:
    """A run, the overrides it was started with (``None``: unknown) and whether its setting is its own record's.

    A run whose setting is not recorded (no results.json, or a failed job's results.json that holds only its
    status, overrides and error) may take its setting from its sweep's other runs (:func:`collect`).
    """
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
    config = _read_yaml(folder / "config_resolved.yaml") or {}
    if results is not None:
        overrides = [str(o) for o in results.get("overrides") or []]
        named = any(results.get(key) for key in ("setting", "experiment", "data"))
        name = _name_from_results(results) if named else _name_from_config(folder, config)
        run = Run(
            folder=folder,
            status=str(results.get("status") or "finished"),
            setting=_setting_key(name, overrides),
            seed=results.get("seed", config.get("seed", _seed_override(overrides))),
            results=results,
            published=results.get("published"),
            published_top5=results.get("published_top5"),
            published_metric=results.get("published_metric") or DEFAULT_PUBLISHED_METRIC,
            curve=curve,
        )
        return run, tuple(sorted(overrides)), named or bool(config.get("setting"))
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])] if overrides_file.is_file() else []
    run = Run(
        folder=folder,
        status="unfinished",
        setting=_setting_key(_name_from_config(folder, config), overrides),
        seed=config.get("seed"),
        published=config.get("published"),
        published_top5=config.get("published_top5"),
        curve=curve,
    )
    return run, tuple(sorted(overrides)) if overrides_file.is_file() else None, bool(config.get("setting"))


def collect(root: Path) -> list[Run]:
    """Every run under ``root``, finished or not, in folder order.

    A run whose own record does not name its setting (no results.json and a config without ``setting``, or a
    failed job's bare results.json) is given the setting of the runs that name theirs and were started with the
    same overrides apart from the seed (its own sweep's other runs), when those agree on one; otherwise its
    setting is rebuilt from its config and Hydra's record of it.
    """
    loaded = [_load_run(folder) for folder in _run_folders(root)]

    def signature(overrides: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(o for o in overrides if _override_key(o) != "seed")

    known: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for run, overrides, named in loaded:
        if named and run.results and overrides is not None:
            known[signature(overrides)].add(run.setting)
    for run, overrides, named in loaded:
        candidates = known.get(signature(overrides), set()) if overrides is not None and not named else set()
        if len(candidates) == 1:
            run.setting = next(iter(candidates))
    return [run for run, _, _ in loaded]


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


def _published_top5(row: SettingRow) -> str:
    return "" if row.published_top5 is None else f"{row.published_top5:.2f} ({row.published_metric} epoch)"


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
            _published_top5(row),
            ",".join(str(e) for e in row.epochs),
            _not_averaged(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def failed_jobs(rows: list[SettingRow]) -> list[Run]:
    """The failed and diverged runs of the rows, in the order of the table, each row's by seed."""
    return [
        run
        for row in rows
        for run in sorted(row.others, key=lambda r: _seed_order(r.seed))
        if run.status in LISTED_STATUSES
    ]


def failed_markdown(rows: list[SettingRow]) -> str:
    """The section below the table: every failed or diverged job with its folder, overrides and error."""
    jobs = failed_jobs(rows)
    if not jobs:
        return ""
    lines = [
        "",
        "## Failed and diverged jobs",
        "",
        "Not averaged into the table; `sdd-train <overrides>` reruns one.",
        "",
    ]
    for run in jobs:
        overrides = " ".join(str(o) for o in run.results.get("overrides") or []) or "none recorded"
        lines.append(f"- {run.folder}: **{run.status}** ({run.setting}, seed {_seed(run.seed)})")
        lines.append(f"  overrides: `{overrides}`")
        error = str(run.results.get("error") or "no error recorded").strip().splitlines() or ["no error recorded"]
        lines += [f"  error: {error[0]}", *(f"  {line}" for line in error[1:])]
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
        diff, diff5 = row.difference(), row.difference_top5()
        record |= {
            "published": "" if row.published is None else row.published,
            "published_metric": row.published_metric if row.published is not None else "",
            "ours_minus_published": "" if diff is None else round(diff, 4),
            "published_top5": "" if row.published_top5 is None else row.published_top5,
            "ours_minus_published_top5": "" if diff5 is None else round(diff5, 4),
            "epochs": " ".join(str(e) for e in row.epochs),
            "not_averaged": "; ".join(f"seed {_seed(r.seed)} {r.status}: {r.folder}" for r in row.others),
        }
        table.append(record)
    return table


def warnings(rows: list[SettingRow]) -> list[str]:
    """The lines sdd-summary prints to stderr: too few seeds, a seed counted twice, interrupted and unfinished runs
    left out (failed and diverged ones are listed below the table)."""
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
            if run.status not in LISTED_STATUSES:  # those are listed below the table, with their error
                lines.append(
                    f"sdd-summary: {row.setting}: seed {_seed(run.seed)} {run.status}, not averaged: {run.folder}"
                )
    return lines


def _foreign_file(out: Path) -> Path | None:
    """The first of sdd-summary's file names in ``out`` that another command wrote, or ``None``.

    While ``summary.md`` starts with :data:`MARKER`, all four files are sdd-summary's own.
    """
    try:
        with (out / "summary.md").open(encoding="utf-8") as handle:
            if handle.readline().rstrip("\n") == MARKER:
                return None
    except (OSError, UnicodeDecodeError):
        pass
    return next((out / name for name in SUMMARY_FILES if (out / name).exists()), None)


def write_summary(directory: Path, out: Path | None = None) -> tuple[list[Run], list[SettingRow], list[Path]]:
    """Reads every run under ``directory`` and writes summary.md, summary.csv and the figures into ``out``.

    Returns:
        The runs, the rows (one per setting) and the files written.

    Raises:
        SummaryError: ``directory`` holds no run, or ``out`` holds a file of those names that sdd-summary did not
            write, or cannot be written (no permission, a full disk); nothing is then half-written.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SummaryError(f"{directory} is not a folder: give the folder of a sweep or a run")
    runs = collect(directory)
    if not runs:
        raise SummaryError(
            f"no run folder (results.json or config_resolved.yaml) under {directory}\n"
            "give the folder sdd-train wrote (outputs/<task>/runs/... or .../multiruns/...)"
        )
    rows = summarize(runs)
    out = Path(out) if out is not None else directory
    foreign = _foreign_file(out)
    if foreign is not None:
        raise SummaryError(
            f"{foreign} exists and was not written by sdd-summary: it is left as it is\n"
            "write the summary elsewhere with --out DIR (or move that file away)"
        )
    table = io.StringIO(newline="")
    records = _csv_rows(rows)
    writer = csv.DictWriter(table, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / "summary.md", f"{MARKER}\n{to_markdown(rows)}{failed_markdown(rows)}".encode())
        write_atomically(out / "summary.csv", table.getvalue().encode())
        figures = plot_summary(rows, out)
    except OSError as error:
        message = unwritable_output(error, "--out DIR")
        if message is None:
            raise
        raise SummaryError(message) from error
    return runs, rows, [out / "summary.md", out / "summary.csv", *figures]
