"""Helpers of the fault and resume tests: failing and signalling callbacks, runs in subprocesses, metrics files."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import psutil

from helpers.app import subprocess_env


class FailAtStep(L.Callback):
    """Raises ``RuntimeError`` at the end of the training batch that reaches ``step`` (a failure mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"injected failure at step {trainer.global_step}")


class SignalAtStep(L.Callback):
    """Sends this process ``signum`` (2: SIGINT, as Ctrl+C does) at the end of the training batch of ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGINT) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def start_app(args: list[str], **extra_env: str) -> subprocess.Popen:
    """``python -m sdd_lightning.cli.train <args>`` in the background, stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, "-m", "sdd_lightning.cli.train", *args],
        env=subprocess_env(**extra_env),
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
