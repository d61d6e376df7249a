"""Helpers of the fault and resume tests: a failing callback, a W&B offline-log reader, process handling."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import psutil

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


class FailAtStep(L.Callback):
    """Raises ``RuntimeError`` at the end of the training batch that reaches ``step`` (a failure mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"injected failure at step {trainer.global_step}")


def app_env(**extra: str) -> dict[str, str]:
    """The environment of an ``sdd-train`` subprocess: this checkout's sources, offline W&B, short errors."""
    path = os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"PYTHONPATH": path, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("WANDB_SERVICE", None)  # set once W&B ran in the test process; a run must start its own service
    return env | {"SDD_DEBUG": "0", "OMP_NUM_THREADS": "1"} | extra


def start_app(args: list[str], **extra_env: str) -> subprocess.Popen:
    """``python -m sdd_lightning.train <args>`` in the background, stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, "-m", "sdd_lightning.train", *args],
        env=app_env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float, what: str) -> None:
    """Polls ``condition`` until it holds; fails (and kills the run) if it does not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the run ended before {what}:\n{output[-3000:]}")
        time.sleep(0.3)
    kill_tree(process)
    raise AssertionError(f"timed out waiting for {what}")


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILLs a started run and every process it started (the other DDP ranks)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for proc in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def completed_epochs(metrics: Path) -> int:
    """How many validation epochs ``metrics.csv`` holds (0 when it does not exist yet)."""
    if not metrics.is_file():
        return 0
    try:
        return sum(1 for row in csv_rows(metrics) if row.get("val/acc1"))
    except (OSError, csv.Error):
        return 0


def wandb_records(path: Path) -> Iterator[object]:
    """The records of a W&B transaction log (``run-<id>.wandb``), as ``wandb_internal_pb2.Record``.

    The file is a 7-byte W&B header followed by LevelDB-log records in 32 KiB blocks, each chunk with a
    7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run_folder: Path) -> tuple[str, list[dict[str, str]]]:
    """The run id and the history rows (key -> JSON value) of one offline W&B run folder."""
    (log_file,) = run_folder.glob("run-*.wandb")
    run_id, rows = "", []
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return run_id, rows
