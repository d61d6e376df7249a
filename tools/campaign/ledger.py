"""The reproduction ledger: the campaign's stages in order, each with its runs, their status and their results.

``reproduction/ledger.json`` is committed and is the one record of what has been run on a GPU and what it gave.
Its layout (JSON)::

    {"format": "sdd-lightning reproduction ledger", "format_version": 1, "title": "...",
     "plan": {...},                       # how leases run (see DEFAULT_PLAN); a stage's own "plan" wins
     "stages": [{
        "id": "cifar100-res32x4-res8x4", "title": "ResNet32x4 -> ResNet8x4",
        "settings": [{"setting": "cifar100/res32x4_res8x4/kd", "label": "ResNet32x4 -> ResNet8x4, KD"}, ...],
        "seeds": [0, 1, 2], "overrides": [],  # sdd-train overrides of this stage, after the plan's
        "teacher_from": "cifar100-teacher-resnet32x4",   # the stage whose exported weights are the teacher
        "export": null,                   # a teacher stage: {"weights": "weights/....safetensors", "arch": ...,
                                          #                   "num_classes": 100}
        "recipe": "...",                  # how the stage's recipe differs from the official one (if it does)
        "epochs": null,                   # fixed by the lease that starts the stage (shortened when < full)
        "status": "pending",              # pending | partial | done (derived from the runs)
        "weights": null,                  # a teacher stage, once merged: file, sha256, measured top-1
        "runs": [{"id": "...", "setting": "...", "seed": 0, "status": "pending", "result": null,
                  "attempts": []}]}],     # attempts: unfinished tries (never reported)
     "measurements": {"<device>": {"<stage id>": {"<k>": {...}}}},   # see schedule.py
     "leases": [{...}]}                   # one summary per merged lease

A run is *done* only when its ``results.json`` said ``status: finished`` after all its epochs (and, for a teacher,
when its exported weights came back); anything else is an attempt, kept with what is known and never reported.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PLAN",
    "LEDGER_FORMAT",
    "LedgerError",
    "iter_runs",
    "load_ledger",
    "pending_runs",
    "run_id",
    "save_ledger",
    "stage_by_id",
    "stage_plan",
    "stage_status",
]

LEDGER_FORMAT = "sdd-lightning reproduction ledger"
LEDGER_VERSION = 1
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

DEFAULT_PLAN: dict[str, Any] = {
    # sdd-train overrides of every run (after the setting's own), e.g. data.root=..., trainer=gpu
    "overrides": [],
    # the official schedule; a shortened run scales the milestones in proportion
    "full_epochs": 240,
    "milestones": [150, 180, 210],
    # predicted epoch time x safety must fit; the measured start-up and tail are added once
    "safety": 1.1,
    # seconds kept at the end of a lease to write $OUT, and (teacher stages) to export the weights
    "pack_s": 20,
    "export_s": 60,
    # per-epoch cost the probe does not see (checkpoint writes), and after-training cost (test, results.json)
    "epoch_overhead_s": 0.5,
    "tail_overhead_s": 10,
    # a stage never starts with fewer epochs, nor (unless its full schedule fits) with less of a lease left
    "min_epochs": 10,
    "min_start_fraction": 0.5,
    "probe": {
        "warmup_steps": 50,
        "steps": 100,
        "val_batches": 10,
        # concurrency levels measured in one start-up; stops being raised when the throughput gain < min_gain
        "concurrency": [1, 2, 4, 6],
        "min_gain": 0.1,
        "timeout_s": 180,
        "barrier_timeout_s": 90,
    },
}


class LedgerError(ValueError):
    """A ledger or lease record that cannot be used; the message names the file, the field and the fix."""


def _merged(base: Mapping[str, Any], top: Mapping[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in (top or {}).items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def stage_plan(ledger: Mapping[str, Any], stage: Mapping[str, Any]) -> dict[str, Any]:
    """The plan a stage runs under: :data:`DEFAULT_PLAN`, then the ledger's ``plan``, then the stage's own."""
    return _merged(_merged(DEFAULT_PLAN, ledger.get("plan")), stage.get("plan"))


def run_id(stage_id: str, setting: str, seed: int) -> str:
    """A run's name (also its folder and log names): ``<stage>-<method or experiment>-s<seed>``."""
    return f"{stage_id}-{setting.rsplit('/', 1)[-1]}-s{seed}"


def iter_runs(ledger: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every ``(stage, run)`` of the ledger, in order."""
    for stage in ledger["stages"]:
        for run in stage["runs"]:
            yield stage, run


def stage_by_id(ledger: Mapping[str, Any], stage_id: str) -> dict[str, Any]:
    """The stage named ``stage_id`` (a :class:`LedgerError` names the known ones otherwise)."""
    for stage in ledger["stages"]:
        if stage["id"] == stage_id:
            return stage
    known = ", ".join(s["id"] for s in ledger["stages"])
    raise LedgerError(f"the ledger has no stage {stage_id!r} (stages: {known})")


def pending_runs(stage: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stage's runs that are not done, in ledger order (seed by seed, so that methods stay paired)."""
    return [run for run in stage["runs"] if run["status"] != "done"]


def stage_status(stage: Mapping[str, Any]) -> str:
    """``done`` when every run is done, ``partial`` when some are, else ``pending``."""
    done = sum(run["status"] == "done" for run in stage["runs"])
    return "done" if done == len(stage["runs"]) else "partial" if done else "pending"


def _check(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise LedgerError(f"ledger {path}: {message}")


def _check_stage(stage: dict[str, Any], index: int, earlier: dict[str, dict[str, Any]], path: Path) -> None:
    where = f"stage {index + 1} ({stage.get('id', 'no id')})"
    _check(
        isinstance(stage.get("id"), str) and bool(SAFE_NAME.match(stage["id"])),
        path,
        f"{where}: 'id' must be a name of letters, digits, '.', '_' and '-'",
    )
    _check(stage["id"] not in earlier, path, f"{where}: the id is used twice; give each stage its own")
    _check(isinstance(stage.get("title"), str), path, f"{where}: give a 'title' (the table shows it)")
    settings = stage.get("settings")
    _check(
        isinstance(settings, list)
        and settings
        and all(isinstance(s, dict) and s.get("setting") and s.get("label") for s in settings),
        path,
        f'{where}: \'settings\' must list {{"setting": ..., "label": ...}}',
    )
    seeds = stage.get("seeds")
    _check(
        isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds),
        path,
        f"{where}: 'seeds' must be a list of integers, e.g. [0, 1, 2]",
    )
    _check(
        all(isinstance(o, str) for o in stage.setdefault("overrides", [])),
        path,
        f"{where}: 'overrides' must be a list of sdd-train overrides (strings)",
    )
    teacher = stage.setdefault("teacher_from", None)
    _check(
        teacher is None or (teacher in earlier and earlier[teacher].get("export")),
        path,
        f"{where}: teacher_from={teacher!r} must name an earlier stage that exports weights",
    )
    export = stage.setdefault("export", None)
    _check(
        export is None
        or (
            isinstance(export, dict)
            and str(export.get("weights", "")).endswith(".safetensors")
            and export.get("arch")
            and isinstance(export.get("num_classes"), int)
        ),
        path,
        f'{where}: \'export\' must be {{"weights": "<folder>/<name>.safetensors", "arch": <network>, '
        f'"num_classes": <int>}}',
    )
    _check(
        export is None or len(stage["settings"]) * len(seeds) == 1,
        path,
        f"{where}: a stage that exports weights has exactly one run (one setting, one seed)",
    )
    epochs = stage.setdefault("epochs", None)
    _check(epochs is None or (isinstance(epochs, int) and epochs >= 1), path, f"{where}: 'epochs' must be null or >= 1")
    for key in ("recipe", "weights"):
        stage.setdefault(key, None)
    expected = [run_id(stage["id"], s["setting"], seed) for seed in seeds for s in settings]
    if "runs" not in stage:
        stage["runs"] = [
            {
                "id": run_id(stage["id"], s["setting"], seed),
                "setting": s["setting"],
                "seed": seed,
                "status": "pending",
                "result": None,
                "attempts": [],
            }
            for seed in seeds
            for s in settings
        ]
    _check(
        [run.get("id") for run in stage["runs"]] == expected,
        path,
        f"{where}: 'runs' do not match settings x seeds; delete 'runs' to have them listed again",
    )
    for run in stage["runs"]:
        _check(run.get("status") in ("pending", "done"), path, f"run {run['id']}: status must be pending or done")
    stage["status"] = stage_status(stage)


def load_ledger(path: str | Path) -> dict[str, Any]:
    """Reads and checks a ledger; lists the runs of stages that have none yet (settings x seeds)."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}: give --ledger <file> (the project's is reproduction/ledger.json)")
    try:
        ledger = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LedgerError(f"ledger {path} is not valid JSON ({error})") from None
    _check(
        isinstance(ledger, dict) and ledger.get("format") == LEDGER_FORMAT, path, f"'format' must be {LEDGER_FORMAT!r}"
    )
    _check(
        ledger.get("format_version", 0) <= LEDGER_VERSION,
        path,
        f"format_version {ledger.get('format_version')} is newer than this code reads ({LEDGER_VERSION})",
    )
    _check(isinstance(ledger.get("stages"), list) and ledger["stages"], path, "'stages' must be a non-empty list")
    earlier: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(ledger["stages"]):
        _check(isinstance(stage, dict), path, f"stage {index + 1} must be an object")
        _check_stage(stage, index, earlier, path)
        earlier[stage["id"]] = stage
    ledger.setdefault("measurements", {})
    ledger.setdefault("leases", [])
    return ledger


def save_ledger(ledger: dict[str, Any], path: str | Path) -> None:
    """Writes the ledger (stage statuses brought up to date) atomically, as indented JSON."""
    for stage in ledger["stages"]:
        stage["status"] = stage_status(stage)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(ledger, indent=2) + "\n")
    tmp.replace(path)
