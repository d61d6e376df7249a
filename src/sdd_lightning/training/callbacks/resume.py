"""Callbacks that make a run resumable and its checkpoints safe (see :mod:`sdd_lightning.training.checkpointing`)."""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from sdd_lightning.errors import ConfigError
from sdd_lightning.training.callbacks.logs import LogContinuation
from sdd_lightning.training.checkpointing import remove_stale_temporaries

log = logging.getLogger(__name__)


class StaleTemporaryCleanup(L.Callback):
    """At the start of fitting, removes stale temporaries from every checkpoint folder (global rank 0)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for callback in trainer.checkpoint_callbacks:
            dirpath = getattr(callback, "dirpath", None)
            removed = remove_stale_temporaries(dirpath) if dirpath else []
            if removed:
                names = ", ".join(p.name for p in removed)
                log.info(f"removed {len(removed)} temporary file(s) of an interrupted checkpoint write: {names}")


class RNGStateCallback(L.Callback):
    """Saves and restores every random generator with the checkpoint."""

    key = "rng_states"

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        version, python_internal, gauss = random.getstate()
        states: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": [version, list(python_internal), gauss],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        version, python_internal, gauss = state_dict["python"]
        random.setstate((version, tuple(python_internal), gauss))
        kind, keys, *rest = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``save_on_exception`` saves on a requested stop only (SIGTERM, Ctrl+C).

    A failure (an exception from the model, the data or a lost DDP process) leaves the last checkpoint
    as it was: the state at a failure may be half-updated, and with several processes the save's closing
    barrier could never complete.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            super().on_exception(trainer, pl_module, exception)

    @property
    def state_key(self) -> str:
        # the key of the plain ModelCheckpoint it replaces, so that earlier runs' checkpoints restore its state
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)


# Scheduler entries that are progress, not settings: they come from the checkpoint unchanged.
_SCHEDULER_PROGRESS = {"last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr", "verbose"}


# Optimiser entries the schedule drives (compared through the scheduler's base_lrs when there is one).
_SCHEDULED = {"params", "lr", "initial_lr"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _shown(value: Any) -> str:
    if isinstance(value, dict):  # MultiStepLR keeps its milestones in a Counter
        return str(sorted(value.elements())) if hasattr(value, "elements") else str(dict(value))
    return repr(value)


class ScheduleCheck(L.Callback):
    """On resume, makes the restored optimiser and LR schedule match the config, and says what changed."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        changes = reconcile_schedule(trainer, pl_module)
        if changes:
            lrs = ", ".join(f"{group['lr']:.6g}" for opt in trainer.optimizers for group in opt.param_groups)
            rank_zero_only(log.warning)(
                f"resumed from {trainer.ckpt_path} with a configuration whose schedule differs from the "
                f"checkpoint's; the configuration wins: {'; '.join(changes)}. The learning rate of epoch "
                f"{trainer.current_epoch} is {lrs}, as if the run had been started with these values."
            )


def reconcile_schedule(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
    """Applies the configured optimiser and scheduler settings to the restored ones; returns the changes.

    The configured objects come from calling ``configure_optimizers`` again. Progress (epoch counters,
    optimiser state such as momentum buffers) stays as restored. A changed scheduler with a closed form
    (cosine, multi-step, step, exponential, polynomial, ...) has its learning rate recomputed for the
    current epoch; any other change raises ``ConfigError``.
    """
    fresh_optimizers, fresh_configs = _init_optimizers_and_lr_schedulers(pl_module)
    scheduled = {id(c.scheduler.optimizer) for c in fresh_configs}
    changes = []
    for restored, fresh in zip(trainer.optimizers, fresh_optimizers, strict=False):
        ignored = _SCHEDULED if id(fresh) in scheduled else {"params", "initial_lr"}
        for old_group, new_group in zip(restored.param_groups, fresh.param_groups, strict=False):
            for key, value in new_group.items():
                if key not in ignored and not _same(old_group.get(key), value):
                    changes.append(f"optimizer {key} {_shown(old_group.get(key))} -> {_shown(value)}")
                    old_group[key] = value
    for restored_config, fresh_config in zip(trainer.lr_scheduler_configs, fresh_configs, strict=False):
        changes += _reconcile_scheduler(restored_config.scheduler, fresh_config.scheduler)
    return changes


def _reconcile_scheduler(restored: Any, fresh: Any) -> list[str]:
    name = type(restored).__name__
    old_state, new_state = restored.state_dict(), fresh.state_dict()
    old_keys, new_keys = set(old_state) - _SCHEDULER_PROGRESS, set(new_state) - _SCHEDULER_PROGRESS
    if old_keys != new_keys:
        raise ConfigError(
            f"the checkpoint was trained with another learning-rate scheduler (its settings: "
            f"{', '.join(sorted(old_keys))}) than the configured {name} ({', '.join(sorted(new_keys))}): resume "
            "with the scheduler=... the run was started with, or start a new run folder"
        )
    changed = sorted(k for k in new_keys if not _same(old_state[k], new_state[k]))
    if not changed:
        return []
    if not hasattr(restored, "_get_closed_form_lr"):
        details = ", ".join(f"{k} {_shown(old_state[k])} -> {_shown(new_state[k])}" for k in changed)
        raise ConfigError(
            f"resuming changes the {name} schedule ({details}), which cannot be recomputed mid-run: resume with "
            "the values the run was started with, or start a new run folder"
        )
    for key in changed:
        setattr(restored, key, new_state[key])
    lrs = restored._get_closed_form_lr()
    for group, lr, base in zip(restored.optimizer.param_groups, lrs, restored.base_lrs, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = float(lr)
        group["initial_lr"] = base
    restored._last_lr = [group["lr"] for group in restored.optimizer.param_groups]
    return [f"{name} {k} {_shown(old_state[k])} -> {_shown(new_state[k])}" for k in changed]


class DistributedStop(L.Callback):
    """SIGTERM with several processes: stop all of them at the same batch, without a collective in a handler.

    Lightning's own SIGTERM handler broadcasts from inside the signal handler and lets each process
    check its local flag, so a signal that lands during a collective (metric sync, validation) can leave
    the processes waiting on different collectives forever. Here the handler only notes the request; at
    the end of each training batch all processes all-reduce their notes, and if any process was asked to
    stop they all raise Lightning's SIGTERM flag together, and stop at the end of that same batch.
    A single-process run keeps Lightning's handler, which is safe there.
    """

    def __init__(self) -> None:
        self.requested = False

    def _install(self, trainer: L.Trainer) -> None:
        if trainer.world_size <= 1:
            return
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True

    # Lightning installs its handler just before it runs a stage; these hooks come right after.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)  # a stop asked during the final test is not acted on: the run is nearly done

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        flag = torch.tensor([1.0 if self.requested else 0.0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and not trainer.received_sigterm:
            rank_zero_only(log.info)(
                f"asked to stop: all {trainer.world_size} processes stop after step {trainer.global_step}"
            )
            # what Lightning's own handler sets; the training loop raises SIGTERMException at this batch's end
            trainer._signal_connector.received_sigterm = True


class RunRecord(L.Callback):
    """Carries a run's history in its checkpoints: the time and attempts spent so far, and its networks.

    ``wall_time_s`` and ``attempts`` count every attempt of a resumed run (up to the checkpoint it resumed
    from); ``networks`` (the architecture settings) lets a resume with other networks be refused by name
    (:func:`check_resume_fits`). Only fitting restores the record: testing a best checkpoint leaves it alone.
    """

    def __init__(self, networks: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        self.earlier_wall_time_s = 0.0
        self.earlier_attempts = 0
        self.networks = networks or {}
        self.trainer: L.Trainer | None = None
        self._stage: str | None = None

    @property
    def wall_time_s(self) -> float:
        return self.earlier_wall_time_s + time.perf_counter() - self.started

    @property
    def attempts(self) -> int:
        return self.earlier_attempts + 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer, self._stage = trainer, stage

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time_s, "attempts": self.attempts, "networks": self.networks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage not in (None, "fit"):
            return
        self.earlier_wall_time_s = float(state_dict.get("wall_time_s", 0.0))
        self.earlier_attempts = int(state_dict.get("attempts", 0))


def resume_callbacks() -> list[L.Callback]:
    """The callbacks every run needs to stop, resume and continue its logs correctly (train.py adds them)."""
    return [RNGStateCallback(), ScheduleCheck(), StaleTemporaryCleanup(), DistributedStop(), LogContinuation()]
