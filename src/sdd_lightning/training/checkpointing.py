"""Never lose a run: atomic checkpoint files, RNG state, a schedule that matches the config, clean stops.

This module holds the checkpoint file handling and the resume checks; the callbacks named below live in
:mod:`sdd_lightning.training.callbacks.resume`.

- ``AtomicCheckpointIO`` writes a checkpoint to a temporary file in the same folder and renames it
  over the target, so a crash mid-write leaves the previous ``last.ckpt`` intact. The file gets the
  mode the umask gives any new file (as ``results.json``); ``StaleTemporaryCleanup`` removes the
  temporaries a killed process left behind when the next run starts.
- ``RNGStateCallback`` stores the Python, NumPy and torch (CPU and CUDA) generator states in every
  checkpoint and restores them on resume, so a resumed run draws the same numbers as an unbroken one.
  The states are stored as plain lists and tensors, so the file still loads with ``weights_only=True``.
- ``LastCheckpoint`` is ``ModelCheckpoint`` for ``last.ckpt``: it also saves when the run is asked to
  stop (SIGTERM, Ctrl+C), and never on a failure, whose state may be half-updated (a NaN, a process of a
  DDP run gone mid-step); the ``last.ckpt`` of the last good epoch then stays.
- ``ScheduleCheck`` compares, on resume, the optimiser and learning-rate schedule restored from the
  checkpoint with the ones the config builds (e.g. ``epochs`` sets the cosine ``T_max``). The config
  wins: the changed values are applied, the learning rate is recomputed for the current epoch, and the
  log says what changed; a change that cannot be applied stops the run with what to do instead.
- ``graceful_interrupts()`` turns Ctrl+C (SIGINT) into SIGTERM. Lightning handles SIGTERM by finishing
  the current batch and raising ``SIGTERMException``; ``LastCheckpoint`` then writes ``last.ckpt``.
  A bare ``KeyboardInterrupt`` could land in the middle of an optimiser step and save half-updated
  weights; this path cannot. It remembers which signal it was, so the log and the final message name it.
- ``RunRecord`` keeps a run's time, attempts and networks in its checkpoints, so a resumed run reports the
  time of all its attempts, and ``check_resume_fits`` refuses a resume with other networks by name.
- ``AtomicCheckpointIO`` names the checkpoint in a failed write's ``OSError`` (a full disk), so the
  run's message names the file; the temporary is removed and the previous file is left as it was.
- ``DistributedStop`` makes that stop safe with several processes: every process notes the signal, and
  all of them agree at the end of a training batch (one all-reduce) to stop at the same step, so the
  checkpoint of the stop is written once and no process waits in a collective the others never enter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sdd_lightning.errors import ConfigError

__all__ = [
    "AtomicCheckpointIO",
    "Interrupt",
    "check_resume_fits",
    "describe_load_failure",
    "graceful_interrupts",
    "remove_stale_temporaries",
]

log = logging.getLogger(__name__)

# A checkpoint <name> is written as .<name>.<pid>.<random>.tmp, then renamed; the older form (mkstemp) was
# .<name>.<random>.tmp. Both match this pattern.
_TEMPORARY_PATTERN = ".*.ckpt.*.tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a half-written checkpoint behind and honours the umask."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Writes ``checkpoint`` to ``path`` through a temporary file in the same folder and an atomic rename."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # 0o666 filtered by the umask, as any file the process creates (mkstemp would force 0o600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(error, OSError) and error.errno is not None and not error.filename:
                # a failed write (a full disk) names no file: name the checkpoint, so the message can
                raise OSError(error.errno, error.strerror or os.strerror(error.errno), str(path)) from error
            raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporary checkpoint files that a killed writer left in ``folder``; returns them.

    Call it only where no other process is writing checkpoints into ``folder`` (the start of a run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in sorted(folder.glob(_TEMPORARY_PATTERN)):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


class Interrupt(logging.Filter):
    """Which signal stopped the run: SIGINT (Ctrl+C) when ``graceful_interrupts`` saw one, else SIGTERM.

    As a logging filter on Lightning's signal connector, it names Ctrl+C in Lightning's "Received SIGTERM"
    line when that SIGTERM came from Ctrl+C.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sigint = False

    @property
    def signal_name(self) -> str:
        return "SIGINT" if self.sigint else "SIGTERM"

    @property
    def description(self) -> str:
        return "interrupted by Ctrl+C (SIGINT)" if self.sigint else "stopped by SIGTERM"

    def filter(self, record: logging.LogRecord) -> bool:
        if self.sigint and isinstance(record.msg, str) and "Received SIGTERM" in record.msg:
            record.msg = re.sub(r"Received SIGTERM: \d+", "Received SIGINT (Ctrl+C): stopping cleanly", record.msg)
        return True


_SIGNAL_LOGGER = "lightning.pytorch.trainer.connectors.signal_connector"


@contextlib.contextmanager
def graceful_interrupts() -> Iterator[Interrupt]:
    """Within the block, Ctrl+C asks for the same clean stop as SIGTERM (see the module docstring).

    Yields an :class:`Interrupt` that says which of the two signals it was.
    """
    interrupt = Interrupt()

    def to_sigterm(signum: int, frame: Any) -> None:
        interrupt.sigint = True
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGINT, to_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield interrupt
        return
    signal_log = logging.getLogger(_SIGNAL_LOGGER)
    signal_log.addFilter(interrupt)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        signal_log.removeFilter(interrupt)


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _state_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What keeps ``saved`` (a checkpoint's state_dict) from loading into a module whose state is ``current``."""
    differences = [
        f"{key}: checkpoint {_shape(saved[key])}, this run {_shape(value)}"
        for key, value in current.items()
        if key in saved and _shape(saved[key]) != _shape(value)
    ]
    missing = [key for key in current if key not in saved]
    unexpected = [key for key in saved if key not in current]
    if missing:
        differences.append(f"{len(missing)} weights of this run are not in the checkpoint (e.g. {missing[0]})")
    if unexpected:
        differences.append(f"the checkpoint has {len(unexpected)} weights this run lacks (e.g. {unexpected[0]})")
    return differences


def _refuse_resume(ckpt_path: str | os.PathLike, differences: list[str]) -> ConfigError:
    shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
    return ConfigError(
        f"cannot resume {ckpt_path}: it holds other networks than this run's ({shown}). Resume with the "
        "configuration the run was started with, or start a new run with hydra.run.dir=<a new folder>"
    )


def check_resume_fits(ckpt_path: str | os.PathLike, pl_module: L.LightningModule, networks: dict[str, Any]) -> None:
    """Raises ``ConfigError`` naming what differs when the checkpoint to resume cannot load into ``pl_module``.

    Compares the checkpoint's ``RunRecord`` networks with ``networks``, then the weights' names and shapes.
    A checkpoint that cannot be read this way is left to Lightning.
    """
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # Lightning's own load reports it
        return
    # "RunRecord": the state key of callbacks.resume.RunRecord (its class name)
    record = (checkpoint.get("callbacks") or {}).get("RunRecord") or {}
    saved_networks = record.get("networks") or {}
    differences = [
        f"{key}: checkpoint {saved_networks[key]}, this run {value}"
        for key, value in networks.items()
        if key in saved_networks and saved_networks[key] != value
    ]
    if not differences and isinstance(checkpoint.get("state_dict"), dict):
        differences = _state_differences(checkpoint["state_dict"], pl_module.state_dict())
    if differences:
        raise _refuse_resume(ckpt_path, differences)


def describe_load_failure(ckpt_path: str | os.PathLike, error: RuntimeError) -> ConfigError | None:
    """A ``ConfigError`` for torch's "Error(s) in loading state_dict" when resuming, or ``None`` for another."""
    text = str(error)
    if "Error(s) in loading state_dict" not in text:
        return None
    details = [line.strip().rstrip(".") for line in text.splitlines()[1:] if line.strip()]
    return _refuse_resume(ckpt_path, details or [text.splitlines()[0]])
