"""One run per output folder: a run holds an exclusive lock on ``<run dir>/.lock`` while it runs.

Two runs writing into one folder would overwrite each other's checkpoints and ``results.json``, and the
second would resume from a ``last.ckpt`` that the first is still writing. The lock is a POSIX record lock
(``fcntl.lockf``) on ``.lock``, which holds the pid, host and start time of its holder. The kernel drops
the lock when its process dies however it dies, and, unlike ``flock``, processes forked from it (DataLoader
workers that outlive it for a moment) do not hold it; it also works on NFS. So a lock file left by a dead
process is free and is simply taken over (the log says so). The file is emptied, not removed, when the run
ends: removing it would let two later runs lock two different files of the same name. (Being per process,
the lock does not stop a second run started inside the same Python process.)

Only the first process of a run takes the lock: the other processes of a DDP run (Lightning starts them
by re-running the same command, with the same ``hydra.run.dir``) share their rank 0's folder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sdd_lightning.errors import RunFolderInUse

__all__ = ["LOCK_FILE", "RunFolderInUse", "hold_run_folder", "launched_as_rank_zero"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# Where launchers put a process's rank: torchrun (RANK, LOCAL_RANK, GROUP_RANK), Lightning's own launcher
# (LOCAL_RANK, NODE_RANK) and SLURM (SLURM_PROCID).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def launched_as_rank_zero() -> bool:
    """Whether this process is the first of its run (no launcher set a non-zero rank for it)."""
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {"pid": text[:40]}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def hold_run_folder(run_dir: str | os.PathLike) -> Iterator[None]:
    """Within the block, this process holds ``run_dir``'s lock; ``RunFolderInUse`` if another process does.

    Processes of a run other than its first (``launched_as_rank_zero``) take no lock.
    """
    if not launched_as_rank_zero():
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunFolderInUse(run_dir, _read_holder(fd)) from None
        previous = _read_holder(fd)
        if previous:
            log.info(
                f"taking over the lock of process {previous.get('pid', '?')} on {previous.get('host', '?')} "
                f"(started {previous.get('started', '?')}), which no longer runs"
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
