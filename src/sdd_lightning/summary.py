"""``sdd-summary DIR``: the runs of a sweep as one table per setting, beside the published numbers.

Every run folder under DIR (a folder holding ``results.json`` or ``config_resolved.yaml``) is read and
grouped by setting: what was run apart from the seed (``setting`` of results.json, or data + teacher +
student + method for an ad-hoc run) plus the overrides that change what is computed. Each row gives, over
the setting's finished runs (seeds), mean ± standard deviation and n of the best-epoch and the last-epoch
validation top-1 and top-5, in percent, beside the published top-1 (and top-5 where published) and which
of the two epochs the paper reports. Interrupted, failed, diverged and unfinished runs (no results.json:
still running, or dead) are listed in their row, never averaged in; below the table, every failed or
diverged job is listed with its folder, its overrides and its error. A warning goes to stderr for every
setting with fewer than three finished seeds. Written into DIR (or ``--out``): ``summary.md``,
``summary.csv``, and two figures, ``summary_bars.png`` (best top-1 per setting beside the published number)
and ``summary_curves.png`` (validation top-1 per epoch of every run).

sdd-summary overwrites only its own files: ``summary.md`` starts with the line ``<!-- written by sdd-summary -->``,
and while that file is its own the other three are too. When one of the four exists and was not written by
sdd-summary (another command's table, say), it stops with exit status 2 and asks for ``--out DIR``. Each file
is written whole or not at all; a folder that cannot be written (no permission, a full disk) is a two-line
message, as is any other mistake of the command line (``SDD_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdd_lightning.model_card import unwritable_output, write_atomically
from sdd_lightning.summary_plots import BARS_FILE, CURVES_FILE, plot_summary

__all__ = [
    "MARKER",
    "MIN_SEEDS",
    "PRESENTATION_OVERRIDES",
    "Run",
    "SettingRow",
    "SummaryError",
    "collect",
    "failed_jobs",
    "main",
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
    "published top-5 (%)",
    "epochs",
    "not averaged: unfinished / failed / diverged",
)


@dataclass
class Run:
    """One run folder: its status, the setting it belongs to, its seed, accuracies and validation curve.

    ``status`` is ``finished``, ``interrupted``, ``failed`` or ``diverged`` (from results.json; a failed or
    diverged job's results.json holds its ``overrides`` and a short ``error``), or ``unfinished`` when the folder
    has no readable results.json (the run is still going, or died without writing one).
    """

    folder: Path
    status: str
    setting: str
    seed: int | None
    results: dict[str, Any] = field(default_factory=dict)
    published: float | None = None
    published_top5: float | None = None
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
    def published_top5(self) -> float | None:
        return next((r.published_top5 for r in self.finished + self.others if r.published_top5 is not None), None)

    @property
    def published_metric(self) -> str:
        runs = self.finished + self.others
        return next((r.published_metric for r in runs if r.published is not None), DEFAULT_PUBLISHED_METRIC)

    def difference(self) -> float | None:
        """Our mean of the number the paper reports (best or last epoch top-1) minus the published one."""
        key = "val/acc1_best" if self.published_metric == "best" else "val/acc1"
        ours = self.stats(key)
        return None if ours is None or self.published is None else ours[0] - self.published

    def difference_top5(self) -> float | None:
        """Our mean top-5 of the epoch the paper reports minus the published top-5 (``None``: none published)."""
        key = "val/acc5_best" if self.published_metric == "best" else "val/acc5"
        ours = self.stats(key)
        return None if ours is None or self.published_top5 is None else ours[0] - self.published_top5

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


class SummaryError(Exception):
    """A folder sdd-summary cannot read or write into; the message (two lines at most) names it and the fix."""


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


def _debug_requested() -> bool:
    """``reporting.debug_requested()``, imported (with Lightning, seconds) only when one of its variables is set."""
    if not {"SDD_DEBUG", "HYDRA_FULL_ERROR"} & set(os.environ):
        return False
    from sdd_lightning.reporting import debug_requested

    return debug_requested()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``sdd-summary``: prints the table and writes it and the figures.

    Returns the exit status: 0, or 2 with a two-line message on stderr for a folder it cannot use.
    """
    parser = argparse.ArgumentParser(prog="sdd-summary", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep folder (or any folder holding run folders)")
    parser.add_argument("--out", type=Path, default=None, help="where to write summary.md/.csv/.png (default: DIR)")
    args = parser.parse_args(argv)
    try:
        runs, rows, written = write_summary(args.directory, args.out)
    except SummaryError as error:
        if _debug_requested():
            raise
        print(f"sdd-summary: {error}", file=sys.stderr)
        return 2
    print(to_markdown(rows) + failed_markdown(rows), flush=True)
    for line in warnings(rows):
        print(line, file=sys.stderr, flush=True)
    print(f"{len(runs)} runs; written to {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
