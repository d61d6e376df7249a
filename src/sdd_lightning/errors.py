"""The errors a user can act on, in one place.

Each command turns these into a short message and exit status 2 (a mistake the user can fix) without a
traceback; every other exception is a bug or an environment failure (exit 1). The modules that raise them
import them from here, so that the error types sit below every layer that raises or reports them.
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CheckpointMismatchError",
    "ClassCountMismatchError",
    "ConfigError",
    "DatasetError",
    "EvalError",
    "QuickstartError",
    "RunFolderInUse",
    "SummaryError",
    "TeacherCacheError",
    "TeacherCheckError",
    "TrainingDiverged",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "did_you_mean",
]


def did_you_mean(name: str, known: Iterable[str], *, cutoff: float = 0.6, any_case: bool = True) -> str:
    """`` Did you mean 'x'?`` for the (up to three) known names closest to ``name``, or ``""``.

    ``any_case``: when nothing is close, a known name that differs from ``name`` in case only is suggested.
    """
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=cutoff)
    if not close and any_case:
        close = [k for k in known if k.lower() == name.lower()]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the override that fixes it."""


class DatasetError(RuntimeError):
    """A data set on disk cannot be used as it is.

    Raised for a missing or empty root folder (the message names the expected layout and how to
    download the set), a missing, truncated or corrupt metadata file or image (the message names the
    file), and for contents that contradict each other (labels out of range, split sizes that do not
    match the metadata). It is never swallowed: no sample is skipped silently.

    It derives from ``RuntimeError`` and takes a single message, so that a ``DataLoader`` worker can
    re-raise it in the main process with the worker's traceback attached.
    """


class TeacherCheckError(ValueError):
    """The teacher scored below the accuracy expected of it before training started."""


class TeacherCacheError(ValueError):
    """The teacher view cache cannot be used as asked; the message names the fix."""


class RunFolderInUse(RuntimeError):
    """Another live process holds the run folder's lock."""

    def __init__(self, run_dir: Path, holder: dict) -> None:
        self.run_dir = run_dir
        self.holder = holder
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host"):
            who += f" on {holder['host']}"
        if holder.get("started"):
            who += f", started {holder['started']}"
        super().__init__(
            f"the run folder {run_dir} is in use by {who}. To resume that run, wait for it to end (or stop it) "
            f"and rerun with hydra.run.dir={run_dir}; to start another, write elsewhere with "
            "hydra.run.dir=<another folder>"
        )


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run cannot recover from it."""


class EvalError(ValueError):
    """An input ``sdd-eval`` or ``sdd-export`` cannot use; the message names it and the fix."""


class SummaryError(Exception):
    """A folder sdd-summary cannot read or write into; the message (two lines at most) names it and the fix."""


class QuickstartError(RuntimeError):
    """A step of the quickstart failed; its own message is already on the console."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file needs a global outside the allow-list; it was not unpickled."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint file cannot be read at all: empty, truncated, corrupt, or not a checkpoint file."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not fit the network they were loaded into."""


class ClassCountMismatchError(CheckpointMismatchError):
    """A checkpoint fits the network's architecture, but its classifier has another number of classes.

    Attributes:
        file_classes: the class count of the file's classifier.
        model_classes: the class count the network was built with.
    """

    def __init__(self, message: str, file_classes: int, model_classes: int) -> None:
        super().__init__(message)
        self.file_classes = file_classes
        self.model_classes = model_classes
