"""``make train``: the quickstart on the built-in synthetic data set, a few minutes on a laptop CPU.

1. trains a small teacher (``small_cnn``) without distillation;
2. distils it into ``tiny_cnn`` with plain KD;
3. distils it into the same ``tiny_cnn`` with SD-KD (M = {1, 2, 4}), same seed and budget;
then prints teacher, KD and SD-KD top-1 with their times. Each step is an ordinary ``sdd-train`` run
(``experiment=quickstart/...``) whose folder holds its logs, checkpoints and results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

STEPS = (
    ("teacher", "quickstart/teacher", "teacher (small_cnn)"),
    ("kd", "quickstart/kd", "KD student (tiny_cnn)"),
    ("sd_kd", "quickstart/sd_kd", "SD-KD student (tiny_cnn)"),
)


def _run(step: str, experiment: str, out: Path, overrides: list[str]) -> dict:
    run_dir = out / step
    command = [sys.executable, "-m", "sdd_lightning.train", f"experiment={experiment}", f"hydra.run.dir={run_dir}"]
    print(f"\n=== {step}: sdd-train experiment={experiment} {' '.join(overrides)}", flush=True)
    subprocess.run([*command, *overrides], check=True)
    return json.loads((run_dir / "results.json").read_text())


def table(results: dict[str, dict]) -> str:
    """The comparison as a markdown table (top-1 in percent)."""
    lines = ["| model | best top-1 (%) | final top-1 (%) | epochs | time (s) |", "|---|---|---|---|---|"]
    for step, _, label in STEPS:
        r = results[step]
        lines.append(
            f"| {label} | {100 * r['val/acc1_best']:.2f} | {100 * r['val/acc1']:.2f} | {r['epochs']} "
            f"| {r['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Runs the three steps; extra ``key=value`` arguments are passed to every run as overrides."""
    parser = argparse.ArgumentParser(prog="sdd-quickstart", description=__doc__.splitlines()[0])
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart") / stamp, help="folder for the runs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. seed=1")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {"teacher": _run("teacher", "quickstart/teacher", args.out, args.overrides)}
    teacher_ckpt = results["teacher"]["best_checkpoint"] or str(args.out / "teacher" / "checkpoints" / "last.ckpt")
    for step, experiment, _ in STEPS[1:]:
        results[step] = _run(step, experiment, args.out, [f"teacher.checkpoint={teacher_ckpt}", *args.overrides])
    report = table(results)
    kd, sd = results["kd"]["val/acc1_best"], results["sd_kd"]["val/acc1_best"]
    verdict = "SD-KD beats KD" if sd > kd else "SD-KD does not beat KD"
    print(f"\n{report}")
    print(f"\n{verdict} here by {100 * (sd - kd):+.2f} points (one seed: a demonstration, not a benchmark).")
    print(f"Total time: {time.perf_counter() - start:.0f} s. Runs, logs and checkpoints: {args.out}/")
    (args.out / "summary.md").write_text(report + "\n")
    return results


if __name__ == "__main__":
    main()
