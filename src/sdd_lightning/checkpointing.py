"""Never lose a run: atomic checkpoint files, RNG state in checkpoints, and a graceful Ctrl+C.

- ``AtomicCheckpointIO`` writes a checkpoint to a temporary file in the same folder and renames it
  over the target, so a crash mid-write leaves the previous ``last.ckpt`` intact.
- ``RNGStateCallback`` stores the Python, NumPy and torch (CPU and CUDA) generator states in every
  checkpoint and restores them on resume, so a resumed run draws the same numbers as an unbroken one.
  The states are stored as plain lists and tensors, so the file still loads with ``weights_only=True``.
- ``graceful_interrupts()`` turns Ctrl+C (SIGINT) into SIGTERM. Lightning handles SIGTERM by finishing
  the current batch and raising ``SIGTERMException``; ``ModelCheckpoint(save_on_exception=True)``
  then writes ``last.ckpt``. A bare ``KeyboardInterrupt`` could land in the middle of an optimiser
  step and save half-updated weights; this path cannot.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "RNGStateCallback", "graceful_interrupts"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a half-written checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise


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


@contextlib.contextmanager
def graceful_interrupts() -> Iterator[None]:
    """Within the block, Ctrl+C asks for the same clean stop as SIGTERM (see the module docstring)."""

    def to_sigterm(signum: int, frame: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGINT, to_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
