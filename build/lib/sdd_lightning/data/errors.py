"""The one exception type for data a user has to fix: missing, incomplete, corrupt or inconsistent sets."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(RuntimeError):
    """A data set on disk cannot be used as it is.

    Raised for a missing or empty root folder (the message names the expected layout and how to
    download the set), a missing, truncated or corrupt metadata file or image (the message names the
    file), and for contents that contradict each other (labels out of range, split sizes that do not
    match the metadata). It is never swallowed: no sample is skipped silently.

    It derives from ``RuntimeError`` and takes a single message, so that a ``DataLoader`` worker can
    re-raise it in the main process with the worker's traceback attached.
    """
