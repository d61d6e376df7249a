"""``next``: advance the campaign of a ledger by what fits one GPU lease, and leave the results in ``$OUT``.

The runner takes the ledger's first unfinished stage, measures it unless the ledger already knows its times on
this device (a probe: the stage's runs started for a few hundred steps, at every concurrency of the plan in one
start-up, see :mod:`.clock`), decides how many of its runs to train at once and for how many epochs
(:mod:`.schedule`), trains them as concurrent ``sdd-train`` processes, exports a teacher stage's weights as fp16
(``sdd-export``), and goes on to the next stage while time is left. Everything that must come back is written
into ``out_dir`` within the device tool's limits (:mod:`.outbox`): ``lease.json`` (the lease record: what
ran, its results, measurements and decisions; rewritten after every step), ``logs.tar.xz`` (each run's log,
``results.json``, metrics and config) and each exported teacher's ``.safetensors``. The ledger itself is not
changed here: ``merge`` applies the record on the machine that holds the repository.

Time: every run must end ``pack_s`` (plus ``export_s`` for a teacher) before ``budget_s`` is spent; a run still
going then is stopped (SIGTERM: it saves ``last.ckpt``; SIGKILL after a grace period) and recorded as an
unfinished attempt, whose numbers are never reported.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sdd_lightning
from campaign import children
from campaign.children import Child, log_tail
from campaign.ledger import LedgerError, load_ledger, pending_runs, stage_by_id, stage_plan
from campaign.measure import observed_times, probe_measurements, read_json, validation_curve
from campaign.outbox import OUT_LIMITS, MiB, check_out_dir, pack_logs, sha256_file
from campaign.schedule import Wave, decide_wave, scaled_milestones
from sdd_lightning.catalog import setting_overrides

__all__ = ["LEASE_FORMAT", "LeaseRunner", "device_key"]

LEASE_FORMAT = "sdd-lightning lease record"
LEASE_VERSION = 1
SRC_DIR = Path(sdd_lightning.__file__).resolve().parents[1]
# tools/: the runs import the lease clock (campaign.clock) from here
TOOLS_DIR = Path(__file__).resolve().parents[1]
CLOCK = "campaign.clock.LeaseClock"


def device_key() -> str:
    """The name measurements are filed under: the first GPU's name (``nvidia-smi``), else ``cpu``."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip().splitlines()[0].strip()
    return "cpu"


def _value(text: str) -> str:
    """A path as a Hydra override value (quoted when it holds characters the override grammar reads)."""
    return text if re.fullmatch(r"[\w/.-]+", text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class LeaseRunner:
    """Runs one lease: ``LeaseRunner(...).run()`` returns the lease record it also wrote to ``out_dir``.

    Args:
        ledger_path: the ledger (read only).
        root: the folder the ledger's paths (teacher weights) are relative to: the repository root.
        out_dir: where everything that comes back goes (the device tool's ``$OUT``).
        work_dir: where runs, probes and exports write (not brought back).
        budget_s: seconds this command may take, writing ``out_dir`` included.
        extra_overrides: ``sdd-train`` overrides added to every run after the ledger's.
        python: the interpreter of the child processes.
        max_stages: stop before starting more than this many stages (``None``: no limit).
        log: where progress lines go (besides the lease record).
    """

    def __init__(
        self,
        ledger_path: Path,
        root: Path,
        out_dir: Path,
        work_dir: Path,
        budget_s: float,
        extra_overrides: Sequence[str] = (),
        python: str = sys.executable,
        max_stages: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.ledger_path = Path(ledger_path)
        self.root = Path(root).resolve()
        self.out = Path(out_dir)
        self.work = Path(work_dir).resolve()
        self.budget_s = float(budget_s)
        self.extra = list(extra_overrides)
        self.python = python
        self.max_stages = max_stages
        self._log = log
        self.ledger = load_ledger(self.ledger_path)
        self.t0 = time.monotonic()
        self.end = self.t0 + self.budget_s
        self.children: list[Child] = []
        self.teachers: dict[str, Path] = {}  # stage id -> weights exported in this lease
        self.device = "unknown"
        self.record: dict[str, Any] = {}

    # -------------------------------------------------------------------------------------------- record

    def _elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def event(self, message: str) -> None:
        """Notes a step in the lease record and prints it."""
        self.record.setdefault("events", []).append({"t_s": self._elapsed(), "message": message})
        self._log(f"[lease {self._elapsed():7.1f} s] {message}")

    def _write_record(self) -> None:
        self.record["elapsed_s"] = self._elapsed()
        tmp = self.out / "lease.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=1) + "\n")
        tmp.replace(self.out / "lease.json")

    # ----------------------------------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        """Runs the lease and writes ``out_dir``; returns the lease record."""
        if self.work.exists() and any(self.work.iterdir()):
            raise LedgerError(
                f"--work {self.work} is not empty: give a fresh folder (a run folder that exists "
                "already would resume from its last.ckpt)"
            )
        self.t0 = time.monotonic()
        self.end = self.t0 + self.budget_s
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = device_key()
        plan = stage_plan(self.ledger, {})
        if self.budget_s <= plan["pack_s"] + plan["export_s"]:
            raise LedgerError(
                f"--budget-s {self.budget_s:.0f}: give more than pack_s + export_s "
                f"({plan['pack_s'] + plan['export_s']} s) of the plan"
            )
        self.record = {
            "format": LEASE_FORMAT,
            "format_version": LEASE_VERSION,
            "lease": datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
            "ledger_sha256": sha256_file(self.ledger_path),
            "device": self.device,
            "budget_s": self.budget_s,
            "started": _now(),
            "git_commit": _git_commit(self.root),
            "extra_overrides": self.extra,
            "events": [],
            "measurements": {},
            "stages": {},
            "waves": [],
            "runs": [],
            "exports": [],
            "stopped": None,
        }
        self.event(f"device {self.device}, budget {self.budget_s:.0f} s, ledger {self.ledger_path}")
        previous = signal.signal(signal.SIGTERM, _raise_exit)
        try:
            self.record["stopped"] = self._campaign()
            self.event(f"stopped: {self.record['stopped']}")
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            self.record["stopped"] = f"runner error: {error!r}"
            self.record["error"] = traceback.format_exc()
            self.event(self.record["stopped"])
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._stop_children()
            self._finish()
        return self.record

    def _campaign(self) -> str:
        """Runs waves until nothing more fits; returns why it stopped."""
        started: list[str] = []
        while True:
            stage = next((s for s in self.ledger["stages"] if self._pending(s)), None)
            if stage is None:
                return "every stage of the ledger is done"
            if stage["id"] in self.record["stages"] and self.record["stages"][stage["id"]].get("failed"):
                return f"stage {stage['id']} failed in this lease: {self.record['stages'][stage['id']]['failed']}"
            if stage["id"] not in started and self.max_stages is not None and len(started) >= self.max_stages:
                return f"--max-stages {self.max_stages} reached"
            teacher = self._teacher_weights(stage)
            if isinstance(teacher, str):
                return teacher
            plan = stage_plan(self.ledger, stage)
            reserve = plan["pack_s"] + (plan["export_s"] if stage["export"] else 0)
            fixed = stage["epochs"] or self.record["stages"].get(stage["id"], {}).get("epochs")
            capacity = self.budget_s - reserve
            room = plan["min_start_fraction"] * capacity
            if not self._known(stage) and fixed is None and self.end - reserve - time.monotonic() < room:
                return f"stage {stage['id']} is not probed: a new stage needs about {room:.0f} s left to start"
            measurements = self._measurements(stage, plan, reserve)
            if isinstance(measurements, str):
                return measurements
            wave = decide_wave(
                fixed_epochs=fixed,
                pending=len(self._pending(stage)),
                measurements=measurements,
                remaining_s=self.end - reserve - time.monotonic(),
                capacity_s=capacity,
                plan=plan,
            )
            if not wave.runs:
                return f"stage {stage['id']}: {wave.reason}"
            if stage["id"] not in started:
                started.append(stage["id"])
            self._run_wave(stage, plan, wave, teacher, reserve)

    def _pending(self, stage: dict[str, Any]) -> list[dict[str, Any]]:
        finished = {run["run"] for run in self.record.get("runs", []) if run["status"] == "finished"}
        return [run for run in pending_runs(stage) if run["id"] not in finished]

    def _teacher_weights(self, stage: dict[str, Any]) -> Path | str | None:
        """The teacher file of a distillation stage, ``None`` for a stage without one, or why it is missing."""
        source = stage["teacher_from"]
        if source is None:
            return None
        if source in self.teachers:
            return self.teachers[source]
        teacher = stage_by_id(self.ledger, source)
        weights = teacher.get("weights")
        if teacher["status"] != "done" or not weights:
            return f"stage {stage['id']} needs the weights of stage {source}, which is not done"
        path = self.root / weights["path"]
        if not path.is_file():
            return f"stage {stage['id']}: teacher weights {weights['path']} are missing from the checkout (commit them)"
        if sha256_file(path) != weights["sha256"]:
            return (
                f"stage {stage['id']}: {weights['path']} does not have the sha256 the ledger records "
                f"({weights['sha256'][:12]}...); restore the committed file"
            )
        return path

    # --------------------------------------------------------------------------------------------- overrides

    def _overrides(self, stage: dict[str, Any], plan: dict[str, Any], setting: str, run_dir: Path) -> list[str]:
        return [
            *setting_overrides(setting),
            *plan["overrides"],
            *stage["overrides"],
            *self.extra,
            f"hydra.run.dir={_value(str(run_dir))}",
            f"+callbacks.lease_clock._target_={CLOCK}",
            f"+callbacks.lease_clock.path={_value(str(run_dir / 'lease_clock.json'))}",
        ]

    def _launch(self, name: str, args: list[str], folder: Path, together: int) -> Child:
        """Starts ``python <args>`` with this checkout's sources first on the path; ``together``: how many children
        share the machine's cores (their thread count)."""
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(
                [str(SRC_DIR), str(TOOLS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "PYTHONUNBUFFERED": "1",
            "HYDRA_FULL_ERROR": "1",
            "WANDB_MODE": "offline",
        }
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // together)))
        child = children.launch(name, [self.python, *args], folder, self.work / "logs" / f"{name}.log", self.root, env)
        self.children.append(child)
        return child

    def _stop_children(self) -> None:
        alive = [c for c in self.children if c.returncode is None]
        if alive:
            self.event(f"stopping {len(alive)} process(es) still running")
            children.terminate(alive)

    # ----------------------------------------------------------------------------------------------- probe

    def _known(self, stage: dict[str, Any]) -> dict[str, Any] | None:
        """The stage's measurements on this device from this lease, else from the ledger, else ``None``."""
        return self.record["measurements"].get(stage["id"]) or self._ledger_measurements(stage) or None

    def _measurements(self, stage: dict[str, Any], plan: dict[str, Any], reserve: float) -> dict[str, Any] | str:
        """The stage's measurements on this device: known ones, else a probe's now (or why it failed)."""
        known = self._known(stage)
        if known:
            return known
        probe = plan["probe"]
        pending = len(self._pending(stage))
        phases = [k for k in probe["concurrency"] if k <= pending]
        if pending < max(probe["concurrency"]) and pending not in phases:
            phases.append(pending)
        phases = sorted(set(phases) | {1})
        deadline = min(time.monotonic() + probe["timeout_s"], self.end - reserve)
        self.event(f"probe {stage['id']}: {phases[-1]} process(es), concurrency {phases}")
        barrier = self.work / "probes" / stage["id"] / "barrier"
        processes = []
        settings = [s["setting"] for s in reversed(stage["settings"])]  # the first process: the SD- method
        for index in range(phases[-1]):
            run_dir = self.work / "probes" / stage["id"] / f"p{index}"
            args = [
                "-m",
                "sdd_lightning.cli.train",
                *self._overrides(stage, plan, settings[index % len(settings)], run_dir),
                "epochs=1",
                "trainer.num_sanity_val_steps=0",
                f"trainer.limit_val_batches={probe['val_batches']}",
                f"trainer.limit_test_batches={probe['val_batches']}",
                f"+callbacks.lease_clock.phases=[{','.join(map(str, phases))}]",
                f"+callbacks.lease_clock.index={index}",
                f"+callbacks.lease_clock.barrier_dir={_value(str(barrier))}",
                f"+callbacks.lease_clock.warmup_steps={probe['warmup_steps']}",
                f"+callbacks.lease_clock.probe_steps={probe['steps']}",
                f"+callbacks.lease_clock.barrier_timeout_s={probe['barrier_timeout_s']}",
                *(["teacher.checkpoint=null", "teacher.allow_random=true"] if stage["teacher_from"] else []),
            ]
            processes.append(self._launch(f"probe-{stage['id']}-p{index}", args, run_dir, phases[-1]))
        children.wait(processes, deadline, stop_on_failure=True)
        clocks = [read_json(p.dir / "lease_clock.json") or {} for p in processes]
        measured = probe_measurements(clocks, [p.launched for p in processes], phases, plan)
        seconds = round(max(p.ended or time.time() for p in processes) - min(p.launched for p in processes), 1)
        self.record.setdefault("probes", []).append(
            {
                "stage": stage["id"],
                "phases": phases,
                "seconds": seconds,
                "returncodes": [p.returncode for p in processes],
            }
        )
        if "1" not in measured:
            tail = log_tail(processes[0].log, 3000)
            self.record["stages"].setdefault(stage["id"], {})["failed"] = "the probe measured nothing"
            self._write_record()
            return (
                f"probe of stage {stage['id']} failed (return codes {[p.returncode for p in processes]}); log:\n{tail}"
            )
        for k, m in measured.items():
            self.event(
                f"probe {stage['id']} k={k}: {m['epoch_s']:.2f} s/epoch ({m['step_s'] * 1000:.1f} ms/step, "
                f"start-up {m['startup_s']:.1f} s)"
            )
        self.record["measurements"][stage["id"]] = measured
        self._write_record()
        return measured

    # ------------------------------------------------------------------------------------------------ waves

    def _run_wave(
        self, stage: dict[str, Any], plan: dict[str, Any], wave: Wave, teacher: Path | None, reserve: float
    ) -> None:
        runs = self._pending(stage)[: wave.runs]
        shortened = wave.epochs < plan["full_epochs"]
        milestones = (
            scaled_milestones(wave.epochs, plan["milestones"], plan["full_epochs"]) if plan["milestones"] else None
        )
        self.event(
            f"stage {stage['id']}: {len(runs)} run(s) at once, {wave.epochs} epochs"
            + (f" (shortened from {plan['full_epochs']}, milestones {milestones})" if shortened else "")
            + f", predicted {wave.predicted_s:.0f} s"
        )
        processes = []
        for run in runs:
            run_dir = self.work / "runs" / run["id"]
            args = [
                "-m",
                "sdd_lightning.cli.train",
                *self._overrides(stage, plan, run["setting"], run_dir),
                f"seed={run['seed']}",
                f"epochs={wave.epochs}",
                *([f"scheduler.milestones=[{','.join(map(str, milestones))}]"] if milestones else []),
            ]
            internal = ("hydra.run.dir=", "+callbacks.lease_clock")
            command = ["sdd-train", *(a for a in args[2:] if not a.startswith(internal))]
            if teacher:
                args.append(f"teacher.checkpoint={_value(str(teacher))}")
                source = stage_by_id(self.ledger, stage["teacher_from"])["export"]["weights"]
                command.append(f"teacher.checkpoint={source}")
            process = self._launch(run["id"], args, run_dir, len(runs))
            process.extra = {"run": run, "command": command}
            processes.append(process)
        start = time.monotonic()
        children.wait(processes, self.end - reserve)
        wall = round(time.monotonic() - start, 1)
        records = [self._run_record(stage, p, wave.epochs, len(runs), shortened, plan) for p in processes]
        finished = [r for r in records if r["status"] == "finished"]
        self.record["waves"].append(
            {
                "stage": stage["id"],
                "runs": [r["run"] for r in records],
                "concurrency": len(runs),
                "epochs": wave.epochs,
                "full_epochs": plan["full_epochs"],
                "milestones": milestones,
                "predicted_s": round(wave.predicted_s, 1),
                "wall_s": wall,
                "finished": len(finished),
            }
        )
        stage_record = self.record["stages"].setdefault(stage["id"], {})
        if finished:
            stage_record |= {"epochs": wave.epochs, "full_epochs": plan["full_epochs"], "milestones": milestones}
            observed = {
                "k": len(runs),
                "epoch_s": max(r["epoch_s"] for r in finished),
                "startup_s": max(r["startup_s"] for r in finished),
                "tail_s": max(r["tail_s"] for r in finished),
                "source": "runs",
            }
            measurements = dict(self.record["measurements"].get(stage["id"]) or self._ledger_measurements(stage))
            measurements[str(len(runs))] = {**measurements.get(str(len(runs)), {}), **observed}
            self.record["measurements"][stage["id"]] = measurements
        for record in records:
            self.event(
                f"run {record['run']}: {record['status']}"
                + (
                    f", best top-1 {100 * record['results']['val/acc1_best']:.2f} %, {record['epoch_s']:.2f} s/epoch"
                    if record["status"] == "finished"
                    else f" ({record.get('reason', '')})"
                )
            )
        unfinished = [r for r in records if r["status"] != "finished"]
        if any(r["status"] != "killed" for r in unfinished):
            stage_record["failed"] = "; ".join(f"{r['run']}: {r['status']}" for r in unfinished)
        if stage["export"] and finished:
            self._export(stage, finished[0], processes[0], plan)
        self._write_record()
        self._pack_logs()

    def _ledger_measurements(self, stage: dict[str, Any]) -> dict[str, Any]:
        return self.ledger["measurements"].get(self.device, {}).get(stage["id"], {})

    def _run_record(
        self,
        stage: dict[str, Any],
        process: Child,
        epochs: int,
        concurrency: int,
        shortened: bool,
        plan: dict[str, Any],
    ) -> dict[str, Any]:
        run = process.extra["run"]
        results = read_json(process.dir / "results.json")
        clock = read_json(process.dir / "lease_clock.json") or {}
        record: dict[str, Any] = {
            "run": run["id"],
            "stage": stage["id"],
            "setting": run["setting"],
            "seed": run["seed"],
            "epochs_planned": epochs,
            "full_epochs": plan["full_epochs"],
            "shortened": shortened,
            "concurrency": concurrency,
            "returncode": process.returncode,
            "command": process.extra["command"],
            "epochs_done": clock.get("epochs_done", max(0, len(clock.get("epoch_starts", [])) - 1)),
        }
        if process.killed:
            record |= {"status": "killed", "reason": "stopped at the end of the lease's budget"}
        elif results is None:
            record |= {"status": "failed", "reason": f"no results.json (exit code {process.returncode})"}
        elif results.get("status") != "finished" or process.returncode != 0 or results.get("epochs") != epochs:
            record |= {
                "status": results.get("status") if results.get("status") != "finished" else "failed",
                "reason": f"status {results.get('status')}, {results.get('epochs')} of {epochs} epochs, "
                f"exit code {process.returncode}",
            }
        else:
            record |= {"status": "finished", "results": {k: v for k, v in results.items() if k != "best_checkpoint"}}
            record |= observed_times(clock, process.launched, process.ended or time.time())
            record["curve_val_acc1"] = validation_curve(process.dir / "csv" / "metrics.csv")
        if record["status"] != "finished":
            record["log_tail"] = log_tail(process.log, 2000)
        self.record["runs"].append(record)
        return record

    # ----------------------------------------------------------------------------------------------- export

    def _export(self, stage: dict[str, Any], run: dict[str, Any], process: Child, plan: dict[str, Any]) -> None:
        """Exports the teacher as fp16 with its model card; its ``.safetensors`` goes to ``out_dir``."""
        destination = stage["export"]["weights"]
        stem = Path(destination).stem
        folder = self.work / "export" / stage["id"]
        args = [
            "-m",
            "sdd_lightning.cli.export",
            str(process.dir),
            "--dtype",
            "fp16",
            "--output-dir",
            str(folder),
            "--name",
            stem,
        ]
        start = time.monotonic()
        exporter = self._launch(f"export-{stage['id']}", args, folder, 1)
        children.wait([exporter], self.end - plan["pack_s"])
        seconds = round(time.monotonic() - start, 1)
        card = read_json(folder / f"{stem}.json")
        weights = folder / f"{stem}.safetensors"
        failure = None
        if exporter.returncode != 0 or card is None or not weights.is_file():
            failure = f"sdd-export failed (exit code {exporter.returncode}): {log_tail(exporter.log, 1500)}"
        elif weights.stat().st_size > OUT_LIMITS["file_bytes"]:
            failure = (
                f"{weights.name} is {weights.stat().st_size / MiB:.1f} MiB, over the 16 MiB a file may have to "
                "come back; this runner does not split files"
            )
        else:
            entry = next(f for f in card["files"] if f["path"] == weights.name)
            if entry["sha256"] != sha256_file(weights):
                failure = f"{weights.name} does not match the sha256 of its model card"
        if failure:
            run["status"] = "failed"
            run["reason"] = f"finished, but the export failed: {failure}"
            self.record["stages"][stage["id"]]["failed"] = run["reason"]
            self.event(f"export of {stage['id']}: {failure}")
            return
        card["files"] = [f for f in card["files"] if f["path"] == weights.name]  # only the .safetensors is kept
        shutil.copyfile(weights, self.out / weights.name)
        self.teachers[stage["id"]] = weights
        self.record["exports"].append(
            {
                "stage": stage["id"],
                "run": run["run"],
                "file": weights.name,
                "destination": destination,
                "sha256": card["files"][0]["sha256"],
                "bytes": card["files"][0]["bytes"],
                "card": card,
                "export_s": seconds,
            }
        )
        accuracy = card["accuracy"] or {}
        self.event(
            f"exported {weights.name} ({weights.stat().st_size / MiB:.2f} MiB, test top-1 "
            f"{100 * accuracy.get('acc1', float('nan')):.2f} % by sdd-eval) in {seconds:.0f} s"
        )

    # ------------------------------------------------------------------------------------------------- $OUT

    def _pack_logs(self) -> None:
        runner_log = "\n".join(f"{e['t_s']:8.1f} {e['message']}" for e in self.record.get("events", []))
        if not pack_logs(self.out / "logs.tar.xz", self.children, runner_log):
            self.event("logs too large to bring back even trimmed; only lease.json carries the results")

    def _finish(self) -> None:
        self.record["finished"] = _now()
        self._pack_logs()
        self._write_record()
        problems = check_out_dir(self.out)
        if problems:
            self.record["out_problems"] = problems
            self.event("$OUT breaks the limits: " + "; ".join(problems))
            self._write_record()
        files = sorted(p.name for p in self.out.iterdir())
        self._log(
            f"[lease] $OUT: {', '.join(files)} ({sum(p.stat().st_size for p in self.out.iterdir()) / MiB:.1f} MiB)"
        )


# ------------------------------------------------------------------------------------------------- helpers


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(f"signal {signum}")


def _git_commit(root: Path) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if found.returncode == 0:
            return found.stdout.strip()
    return None
