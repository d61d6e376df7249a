"""``make train``: the quickstart on the built-in synthetic data set, about four minutes on 2 idle CPU cores.

1. trains a small teacher (``small_cnn``) without distillation;
2. distils it into ``tiny_cnn`` with plain KD and with SD-KD (M = {1, 2, 4}), same budget, over three seeds
   (one ``sdd-train -m`` sweep);
then prints the teacher's top-1 and the students' mean ± std over the seeds, and SD-KD's lead over KD seed by
seed, so that a reader can see whether the lead is larger than the spread. Each step is an ordinary
``sdd-train`` run (``experiment=quickstart/...``) whose folder holds its logs, checkpoints and results.json;
the table goes to ``<out>/quickstart.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sdd_lightning.errors import QuickstartError

__all__ = ["main", "run_quickstart", "table"]

TEACHER = ("teacher", "quickstart/teacher", "teacher (small_cnn)")
STUDENTS = (
    ("kd", "quickstart/kd", "KD student (tiny_cnn)"),
    ("sd_kd", "quickstart/sd_kd", "SD-KD student (tiny_cnn, M = {1, 2, 4})"),
)
SEEDS = (0, 1, 2)
TABLE_FILE = "quickstart.md"


def _sdd_train(args: list[str]) -> None:
    command = [sys.executable, "-m", "sdd_lightning.cli.train", *args]
    print(f"\n=== sdd-train {' '.join(args)}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise QuickstartError(f"sdd-train {' '.join(args)} failed (its message is above)")


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def run_quickstart(out: Path, overrides: list[str], seeds: tuple[int, ...] = SEEDS) -> dict[str, list[dict]]:
    """Runs the teacher, then one sweep of both students over ``seeds``; returns every run's results.json."""
    _sdd_train([f"experiment={TEACHER[1]}", f"hydra.run.dir={out / 'teacher'}", *overrides])
    teacher = _results(out / "teacher")
    checkpoint = teacher["best_checkpoint"] or str(out / "teacher" / "checkpoints" / "last.ckpt")
    experiments = ",".join(experiment for _, experiment, _ in STUDENTS)
    _sdd_train(
        [
            "-m",
            f"experiment={experiments}",
            f"seed={','.join(str(s) for s in seeds)}",
            f"teacher.checkpoint={checkpoint}",
            f"hydra.sweep.dir={out / 'students'}",
            *overrides,
        ]
    )
    runs: dict[str, list[dict]] = {"teacher": [teacher], **{step: [] for step, _, _ in STUDENTS}}
    for job in sorted((out / "students").glob("*/results.json"), key=lambda p: int(p.parent.name)):
        results = json.loads(job.read_text())
        runs[results["distill"]].append(results)
    for step in runs:
        runs[step].sort(key=lambda r: r["seed"])
    return runs


def _mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def table(runs: dict[str, list[dict]]) -> str:
    """The comparison as a markdown table: top-1 in percent, mean ± sample std over the seeds."""
    lines = [
        "| model | seeds | best top-1 (%) | final top-1 (%) | epochs | time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for step, _, label in (TEACHER, *STUDENTS):
        rs = runs[step]
        lines.append(
            f"| {label} | {','.join(str(r['seed']) for r in rs)} "
            f"| {_mean_std([100 * r['val/acc1_best'] for r in rs])} | {_mean_std([100 * r['val/acc1'] for r in rs])} "
            f"| {rs[0]['epochs']} | {statistics.fmean(r['wall_time_s'] for r in rs):.0f} |"
        )
    return "\n".join(lines)


def verdict(runs: dict[str, list[dict]]) -> str:
    """SD-KD's lead over KD seed by seed (same seed, same draws), and whether it exceeds the seeds' spread."""
    kd = {r["seed"]: r["val/acc1_best"] for r in runs["kd"]}
    sd = {r["seed"]: r["val/acc1_best"] for r in runs["sd_kd"]}
    leads = [100 * (sd[s] - kd[s]) for s in sorted(kd.keys() & sd.keys())]
    per_seed = ", ".join(f"{lead:+.2f}" for lead in leads)
    if len(leads) < 2:
        return f"SD-KD - KD (best top-1): {per_seed} points on one seed: a demonstration, not a measurement."
    mean, std = statistics.fmean(leads), statistics.stdev(leads)
    if all(lead > 0 for lead in leads) and mean > 2 * std:
        judged = "SD-KD leads in every seed, by more than twice the spread"
    elif all(lead > 0 for lead in leads):
        judged = "SD-KD leads in every seed, but not by twice the spread"
    else:
        judged = "SD-KD does not lead in every seed: the difference is within the noise here"
    return f"SD-KD - KD (best top-1), per seed: {per_seed} points; mean {mean:+.2f} ± {std:.2f}. {judged}."


def main(argv: list[str] | None = None) -> int:
    """Runs the quickstart; extra ``key=value`` arguments are passed to every run as overrides."""
    parser = argparse.ArgumentParser(prog="sdd-quickstart", description=__doc__.splitlines()[0])
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart") / stamp, help="folder for the runs")
    parser.add_argument("--seeds", default=",".join(str(s) for s in SEEDS), help="students' seeds (default: 0,1,2)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. epochs=3")
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    start = time.perf_counter()
    try:
        runs = run_quickstart(args.out.absolute(), args.overrides, seeds)
    except QuickstartError as error:
        print(f"sdd-quickstart: {error}", file=sys.stderr)
        return 1
    report = table(runs)
    print(f"\n{report}\n\n{verdict(runs)}")
    print(f"Total time: {time.perf_counter() - start:.0f} s. Runs, logs and checkpoints: {args.out}/")
    (args.out / TABLE_FILE).write_text(f"{report}\n\n{verdict(runs)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
