"""``LeaseClock``: a Lightning callback that writes a run's wall-clock timings where the lease runner reads them.

The runner adds it to every run it starts (``+callbacks.lease_clock._target_=...``); it changes nothing in the
training. It records when training started, when each epoch started (the file is rewritten then, so the runner
sees progress), when training ended, and the full batch counts of an epoch.

As a *probe* (``phases=[1, 2, 4]``, ``index``, ``barrier_dir``) it also measures the steady-state time of one
training step when ``k`` processes train at once, for every ``k`` of ``phases``, in one start-up: ``max(phases)``
processes start together and each trains ``warmup_steps`` steps; then, phase by phase, processes ``0 .. k-1``
train ``probe_steps`` steps in a window that opens for all of them at once (a file barrier) while the others
wait without work, and each records its window's time per step. The device is synchronised at each window's
edges, so the times are the device's, not the launch queue's. After the last phase the process validates
(``trainer.limit_val_batches`` batches, timed: the validation step time) and stops.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["LeaseClock"]


class LeaseClock(L.Callback):
    """Writes the timings of a run (and, as a probe, of its training step at several concurrencies) to ``path``.

    Args:
        path: the JSON file to write (rewritten at every epoch start and at the end).
        phases: concurrency levels to measure, ascending (empty: no probe, just the timings).
        index: this process's index among the probe's processes (0-based).
        barrier_dir: a folder the probe's processes share for their barriers.
        warmup_steps: steps before the first window (cuDNN autotuning, allocator warm-up).
        probe_steps: steps in each window; shortened when an epoch has too few batches for all phases.
        barrier_timeout_s: how long to wait for the other processes before giving up (the process then fails).
    """

    def __init__(
        self,
        path: str,
        phases: list[int] | None = None,
        index: int = 0,
        barrier_dir: str | None = None,
        warmup_steps: int = 50,
        probe_steps: int = 100,
        barrier_timeout_s: float = 120.0,
    ) -> None:
        self.path = Path(path)
        self.phases = [int(k) for k in phases or []]
        if self.phases and (self.phases != sorted(set(self.phases)) or self.phases[0] < 1):
            raise ValueError(f"LeaseClock phases={phases}: give distinct concurrency levels >= 1 in ascending order")
        if self.phases and barrier_dir is None:
            raise ValueError("LeaseClock: a probe (phases=...) needs barrier_dir, the folder its processes share")
        self.index = index
        self.barrier_dir = Path(barrier_dir) if barrier_dir else None
        self.warmup_steps = warmup_steps
        self.probe_steps = probe_steps
        self.barrier_timeout_s = barrier_timeout_s
        self.record: dict[str, Any] = {"pid": os.getpid(), "epoch_starts": []}
        self._phase = 0  # index into self.phases of the phase in progress or next
        self._window_start: float | None = None
        self._steps_in_window = 0
        self._batches = 0
        self._val_start: float | None = None

    # ------------------------------------------------------------------------------------------ plain timings

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.replace(self.path)

    def _sync(self, trainer: L.Trainer) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        device = trainer.strategy.root_device
        self.record |= {
            "train_start": time.time(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "train_batches": _batches(trainer.train_dataloader, trainer.num_training_batches),
            "val_batches": _batches(trainer.val_dataloaders, sum(trainer.num_val_batches or [0])),
        }
        if self.phases:
            room = self.record["train_batches"] - self.warmup_steps - 1  # the batch that ends the last window
            steps = min(self.probe_steps, room // len(self.phases))
            if steps < 1:
                raise ValueError(
                    f"LeaseClock: an epoch of {self.record['train_batches']} batches is too short for "
                    f"{self.warmup_steps} warm-up steps and {len(self.phases)} phases: lower warmup_steps"
                )
            self.probe_steps = steps
            self.record["probe"] = {
                "phases": self.phases,
                "index": self.index,
                "warmup_steps": self.warmup_steps,
                "steps": steps,
                "step_s": {},
            }
        self._write()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["epoch_starts"].append(time.time())
        self._write()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["train_end"] = time.time()
        self.record["epochs_done"] = trainer.current_epoch
        self._write()

    # ----------------------------------------------------------------------------------------------- probe

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.phases or self._phase >= len(self.phases):
            return
        self._batches += 1
        if self._batches <= self.warmup_steps:
            return
        if "warm_at" not in self.record:  # warm-up over: start-up, compilation and autotuning are behind
            self._sync(trainer)
            self.record["warm_at"] = time.time()
        while self._phase < len(self.phases):
            k = self.phases[self._phase]
            if self._window_start is None:  # arriving at the start of phase k
                self._sync(trainer)
                self._barrier(f"start{self._phase}", self.phases[-1])
                if self.index < k:
                    self._window_start = time.perf_counter()
                    self._steps_in_window = 0
                    return  # this batch is the window's first step
                self._barrier(f"done{self._phase}", k, arrive=False)  # sit out the phase without work
                self._phase += 1
                continue
            self._steps_in_window += 1
            if self._steps_in_window < self.probe_steps:
                return
            self._sync(trainer)
            seconds = time.perf_counter() - self._window_start
            self.record["probe"]["step_s"][str(k)] = seconds / self.probe_steps
            self._write()
            self._window_start = None
            self._barrier(f"done{self._phase}", k, wait=False)
            self._phase += 1
        trainer.should_stop = True  # every phase measured: validate once (timed) and stop

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.phases and not trainer.sanity_checking:
            self._sync(trainer)
            self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.phases and self._val_start is not None and not trainer.sanity_checking:
            self._sync(trainer)
            batches = sum(trainer.num_val_batches or [0])
            if batches:
                self.record["probe"]["val_step_s"] = (time.perf_counter() - self._val_start) / batches
                self.record["probe"]["val_concurrency"] = self.phases[-1]
                self._write()
            self._val_start = None

    def _barrier(self, name: str, count: int, arrive: bool = True, wait: bool = True) -> None:
        """Marks this process as arrived at barrier ``name`` and waits until ``count`` processes have."""
        assert self.barrier_dir is not None
        self.barrier_dir.mkdir(parents=True, exist_ok=True)
        if arrive:
            (self.barrier_dir / f"{name}.{self.index}").touch()
        deadline = time.monotonic() + self.barrier_timeout_s
        while wait and len(list(self.barrier_dir.glob(f"{name}.*"))) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"LeaseClock probe: waited {self.barrier_timeout_s:.0f} s at barrier {name} for {count} "
                    f"processes; another probe process must have failed (see its log)"
                )
            time.sleep(0.002)


def _batches(loaders: Any, fallback: int | float) -> int:
    """The full number of batches an epoch of ``loaders`` has (before ``limit_*_batches``)."""
    try:
        if isinstance(loaders, (list, tuple)):
            return sum(len(loader) for loader in loaders)
        return len(loaders)
    except TypeError:
        return int(fallback)
