"""Times read from the clock files (:mod:`.clock`) of a probe or of finished runs, as the measurements that
:mod:`.schedule` plans with, and a run's validation curve from its metrics."""

from __future__ import annotations

import csv
import itertools
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["observed_times", "probe_measurements", "read_json", "validation_curve"]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or ``None`` when it is missing or unreadable (a process that died early)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def probe_measurements(
    clocks: Sequence[Mapping[str, Any]], launched: Sequence[float], phases: Sequence[int], plan: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """A stage's measurement at each concurrency its probe completed (keys ``"1"``, ``"2"``, ...).

    Args:
        clocks: the clock file of each probe process (empty for one that wrote none).
        launched: each process's launch time (wall clock).
        phases: the concurrency levels probed, ascending.
        plan: the stage's plan (``epoch_overhead_s``, ``tail_overhead_s``).
    """
    probes = [c.get("probe") or {} for c in clocks]
    warm = [c["warm_at"] - t for c, t in zip(clocks, launched, strict=True) if "warm_at" in c]
    if not clocks or not clocks[0].get("train_batches") or not warm:
        return {}
    top = str(phases[-1])
    top_step = max((p["step_s"][top] for p in probes if top in p.get("step_s", {})), default=None)
    # start-up: launch to the end of the warm-up (imports, data, compilation, autotuning), less the warm-up's
    # own steps, which ran at the probe's full concurrency
    warmup = probes[0].get("warmup_steps", 0) * (top_step or 0.0)
    starts = [c["train_start"] - t for c, t in zip(clocks, launched, strict=True) if "train_start" in c]
    startup = max(max(warm) - warmup, *starts)
    val_steps = [p["val_step_s"] for p in probes if "val_step_s" in p]
    batches, val_batches = clocks[0]["train_batches"], clocks[0]["val_batches"]
    measured = {}
    for k in phases:
        steps = [probes[i]["step_s"][str(k)] for i in range(k) if str(k) in probes[i].get("step_s", {})]
        if len(steps) < k:
            break
        step = max(steps)
        # validation was timed with every probe process at once; scale it as the training step scales
        val_step = max(val_steps) * step / top_step if val_steps and top_step else step
        measured[str(k)] = {
            "k": k,
            "step_s": step,
            "val_step_s": val_step,
            "train_batches": batches,
            "val_batches": val_batches,
            "epoch_s": batches * step + val_batches * val_step + plan["epoch_overhead_s"],
            "startup_s": startup,
            "tail_s": val_batches * val_step + plan["tail_overhead_s"],
            "source": "probe",
        }
    return measured


def observed_times(clock: Mapping[str, Any], launched: float, ended: float) -> dict[str, float]:
    """A finished run's seconds per epoch (the median), start-up, tail and wall time, from its clock file."""
    marks = [*clock.get("epoch_starts", []), clock.get("train_end")]
    durations = [b - a for a, b in itertools.pairwise(marks) if a is not None and b is not None]
    epoch = statistics.median(durations) if durations else 0.0
    # start-up: launch to the first step, plus what the first epoch took beyond a typical one (compilation,
    # autotuning)
    first = durations[0] - epoch if durations else 0.0
    return {
        "epoch_s": round(epoch, 3),
        "startup_s": round(clock.get("train_start", launched) - launched + first, 1),
        "tail_s": round(ended - clock.get("train_end", ended), 1),
        "wall_s": round(ended - launched, 1),
    }


def validation_curve(metrics: Path) -> list[float]:
    """The validation top-1 of every epoch, from a run's ``csv/metrics.csv`` (4 decimals)."""
    if not metrics.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with metrics.open() as handle:
        for row in csv.DictReader(handle):
            if row.get("val/acc1") not in (None, "") and row.get("epoch") not in (None, ""):
                by_epoch[int(float(row["epoch"]))] = round(float(row["val/acc1"]), 4)
    return [by_epoch[e] for e in sorted(by_epoch)]
