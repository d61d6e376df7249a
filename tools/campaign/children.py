"""The runner's child processes (``sdd-train``, ``sdd-export``): started in a process group of their own with a
log, waited for against a deadline, and stopped gracefully (SIGTERM, then SIGKILL after a grace period) with all
they started. They stay in the runner's session, so whatever ends the runner's session ends them too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GRACE_S", "Child", "launch", "log_tail", "tail_bytes", "terminate", "wait"]

GRACE_S = 15.0  # after SIGTERM (a run saves last.ckpt and writes results.json), before SIGKILL


@dataclass
class Child:
    """One child process: its name, the folder it writes, its log, and how it ended.

    ``launched`` and ``ended`` are wall-clock times (``time.time()``), comparable with a clock file's.
    """

    name: str
    dir: Path
    log: Path
    popen: subprocess.Popen
    launched: float
    killed: bool = False
    ended: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def returncode(self) -> int | None:
        """The exit code, or ``None`` while it runs."""
        return self.popen.poll()


def launch(name: str, command: Sequence[str], folder: Path, log: Path, cwd: Path, env: Mapping[str, str]) -> Child:
    """Starts ``command`` in a process group of its own (stopping it stops what it started), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        popen = subprocess.Popen(
            list(command), stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env), process_group=0
        )
    return Child(name, folder, log, popen, time.time())


def wait(children: Sequence[Child], deadline: float, stop_on_failure: bool = False) -> None:
    """Waits until every child has ended; at ``deadline`` (``time.monotonic()``) stops the rest and marks them
    ``killed``. With ``stop_on_failure``, one child's failure stops the others (not marked killed)."""
    while True:
        for child in children:
            if child.ended is None and child.returncode is not None:
                child.ended = time.time()
        alive = [c for c in children if c.returncode is None]
        if not alive:
            return
        failed = stop_on_failure and any(c.returncode not in (None, 0) for c in children)
        if time.monotonic() >= deadline or failed:
            for child in alive:
                child.killed = not failed
            terminate(alive)
            return
        time.sleep(0.2)


def terminate(children: Sequence[Child]) -> None:
    """SIGTERM to each child's process group, SIGKILL to what is left after :data:`GRACE_S`."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.popen.pid, signal.SIGTERM)
    stop = time.monotonic() + GRACE_S
    while time.monotonic() < stop and any(c.returncode is None for c in children):
        time.sleep(0.2)
    for child in children:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.popen.pid, signal.SIGKILL)
            child.popen.wait()
        child.ended = child.ended or time.time()


def tail_bytes(path: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of a file (empty when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read()
    except OSError:
        return b""


def log_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a log, as text."""
    return tail_bytes(path, limit).decode(errors="replace")
