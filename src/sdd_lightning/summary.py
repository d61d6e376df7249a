"""``sdd-summary DIR``: the results.json files of a sweep as one table beside the published numbers.

Runs are grouped by setting (experiment, or data + teacher + student + method when no experiment was
named); each row gives the mean and standard deviation over the group's runs (seeds) of the best and
the final validation top-1, in percent, and the published top-1 the setting targets. The table is
printed as markdown and written as ``summary.md`` and ``summary.csv`` into DIR (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["collect", "main", "summarize"]

COLUMNS = ["setting", "runs", "seeds", "best top-1 (%)", "final top-1 (%)", "published (%)", "diff (pp)", "epochs"]


def collect(root: Path) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``root`` (rank copies of multi-process runs left out)."""
    runs = []
    for path in sorted(root.rglob("results.json")):
        if "ranks" in path.parts:
            continue
        try:
            runs.append(json.loads(path.read_text()) | {"_path": str(path)})
        except json.JSONDecodeError as error:
            raise SystemExit(f"sdd-summary: {path} is not valid JSON ({error}); remove or fix it") from None
    return runs


def _setting(run: dict[str, Any]) -> str:
    """What was run, apart from the seed: the experiment (or data, pair and method) and other overrides."""
    if run.get("experiment"):
        name = run["experiment"]
    else:
        teacher = f"{run['teacher']} -> " if run.get("teacher") else ""
        name = f"{run.get('data', '?')}: {teacher}{run.get('student', '?')} ({run.get('distill', '?')})"
    ignored = ("seed=", "experiment=", "distill=", "hydra.", "data.root=", "teacher.checkpoint=", "ckpt_path=")
    extra = [o for o in run.get("overrides", []) if not o.lstrip("+~").startswith(ignored)]
    return " ".join([name, *extra])


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def summarize(runs: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per setting, in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[_setting(run)].append(run)
    rows = []
    for setting, members in groups.items():
        best = [100 * r["val/acc1_best"] for r in members if r.get("val/acc1_best") is not None]
        final = [100 * r["val/acc1"] for r in members if r.get("val/acc1") is not None]
        published = next((r["published"] for r in members if r.get("published") is not None), None)
        diff = f"{statistics.fmean(best) - published:+.2f}" if best and published is not None else ""
        rows.append(
            {
                "setting": setting,
                "runs": str(len(members)),
                "seeds": ",".join(str(r.get("seed")) for r in members),
                "best top-1 (%)": _mean_std(best),
                "final top-1 (%)": _mean_std(final),
                "published (%)": "" if published is None else f"{published:.2f}",
                "diff (pp)": diff,
                "epochs": ",".join(sorted({str(r.get("epochs")) for r in members})),
            }
        )
    return rows


def to_markdown(rows: list[dict[str, str]]) -> str:
    """The rows as a GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point of ``sdd-summary``."""
    parser = argparse.ArgumentParser(prog="sdd-summary", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a sweep folder (or any folder holding results.json files)")
    parser.add_argument("--out", type=Path, default=None, help="where to write summary.md/.csv (default: DIR)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        raise SystemExit(f"sdd-summary: {args.directory} is not a folder: give the folder of a sweep or a run")
    runs = collect(args.directory)
    if not runs:
        raise SystemExit(f"sdd-summary: no results.json under {args.directory}; did the runs finish?")
    rows = summarize(runs)
    markdown = to_markdown(rows)
    out = args.out or args.directory
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(markdown)
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(markdown, end="")
    print(f"\n{len(runs)} runs; written to {out / 'summary.md'} and {out / 'summary.csv'}")


if __name__ == "__main__":
    main()
