"""Loggers that continue a run's history when the run resumes in its folder, instead of starting over.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv``, and its ``WandbLogger`` starts a new W&B
run each time. The loggers here keep what an earlier (interrupted) process of the same run folder wrote:

- ``ResumableCSVLogger`` keeps the earlier rows of ``metrics.csv`` (and their columns; a metric that
  appears later adds a column, the earlier rows keep theirs);
- ``ResumableTensorBoardLogger`` writes a new event file next to the earlier ones in the same folder;
- ``ResumableWandbLogger`` stores the W&B run id in ``<run>/wandb/run_id`` and resumes that run
  (``resume="allow"``), online or offline (``wandb sync`` uploads the offline parts in order).

When the run continues from step ``S`` (``LogContinuation`` tells them at the start of training),
rows and events that an earlier process logged at steps ``>= S`` come from training that the
checkpoint does not hold (the process was killed after it): the CSV drops them, and TensorBoard
is told to hide them (its ``purge_step`` mechanism), so a step is never shown twice. W&B cannot
hide them: its history keeps them, in order. A fresh run in a folder with old logs starts at step 0,
so its logs then start empty, as before.

The CSV and TensorBoard files are flushed whenever a checkpoint is saved, so what is logged up to a
checkpoint is on disk whenever the checkpoint is.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

__all__ = [
    "ResumableCSVLogger",
    "ResumableTensorBoardLogger",
    "ResumableWandbLogger",
    "wandb_run_id",
]

log = logging.getLogger(__name__)

WANDB_ID_FILE = "run_id"


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes metrics.csv here. Keep it, and start from its columns, so that new rows are
        # appended under the same header (a new metric name rewrites the file with the extra column).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def drop_rows_from(self, step: int) -> tuple[int, int]:
        """Removes the rows logged at ``step`` or later from the file; returns (rows kept, rows dropped)."""
        self.save()
        if not self._fs.isfile(self.metrics_file_path):
            return 0, 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        kept = [row for row in rows if not _at_or_after(row.get("step"), step)]
        if len(kept) == len(rows):
            return len(kept), 0
        if not kept:
            self._fs.rm_file(self.metrics_file_path)
            self.metrics_keys = []
            return 0, len(rows)
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        return len(kept), len(rows) - len(kept)


def _at_or_after(value: str | None, step: int) -> bool:
    try:
        return int(float(value)) >= step
    except (TypeError, ValueError):
        return False


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues an existing ``metrics.csv`` (see the module docstring).

    Takes the arguments of Lightning's ``CSVLogger``; ``version=""`` writes straight into
    ``<save_dir>/<name>/``.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def continue_from(self, step: int) -> None:
        """Drops the rows an earlier process logged at ``step`` or later (not covered by the checkpoint)."""
        kept, dropped = self.experiment.drop_rows_from(step)
        if kept or dropped:
            log.info(
                f"{self.experiment.metrics_file_path}: continuing from step {step} after {kept} earlier row(s)"
                + (f"; dropped {dropped} row(s) logged after the checkpoint" if dropped else "")
            )

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flushes the rows so far: what a checkpoint holds is always in the file too."""
        self.save()


class ResumableTensorBoardLogger(TensorBoardLogger):
    """``TensorBoardLogger`` that continues the event files of its folder (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._earlier_events = any(Path(self.log_dir).glob("events.out.tfevents.*"))

    @rank_zero_only
    def continue_from(self, step: int) -> None:
        """Tells TensorBoard to hide the earlier events at ``step`` or later (as ``SummaryWriter(purge_step)``)."""
        if not self._earlier_events:
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer = self.experiment._get_file_writer()
        writer.add_event(Event(step=step, file_version="brain.Event:2"))
        writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
        writer.flush()
        log.info(f"{self.log_dir}: continuing the TensorBoard events from step {step}")

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flushes the events so far: what a checkpoint holds is always in the event files too."""
        if self._experiment is not None:
            self._experiment.flush()


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The W&B run id of a run folder: read from ``<run>/wandb/run_id``, created there on first use."""
    path = Path(run_dir) / "wandb" / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B's ids
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class ResumableWandbLogger(WandbLogger):
    """``WandbLogger`` whose run id belongs to the run folder, so a resumed run continues the same W&B run.

    Without an explicit ``id`` (or ``version``), the id is read from ``<save_dir>/wandb/run_id`` or
    created there; the run is opened with ``resume="allow"``. Other arguments are those of Lightning's
    ``WandbLogger``.
    """

    def __init__(self, *args: Any, save_dir: str = ".", id: str | None = None, **kwargs: Any) -> None:
        if id is None and kwargs.get("version") is None and rank_zero_only.rank == 0:
            id = wandb_run_id(save_dir)
        kwargs.setdefault("resume", "allow")
        super().__init__(*args, save_dir=save_dir, id=id, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning passes anonymous=None, which W&B warns about on every run ("has no effect")
            self._wandb_init.pop("anonymous", None)
