"""What a run says: its log file, the warnings it shows, the errors it reports and the result it prints.

- ``setup_run_logging()`` sends Lightning's messages and Python warnings through the run's logging
  (Hydra's console handler and ``<run>/train.log``), and drops the warnings and tips that no user of
  ``sdd-train`` can act on (``quiet_warnings``). ``EvalModeCheck`` replaces Lightning's "modules in eval
  mode" warning, which the frozen teacher always triggers, by one that names only modules that train.
- ``reported_errors()`` and ``run_cli()`` turn the errors a user fixes (a bad config value, a broken
  data set, an output folder that cannot be written or is full, a folder in use by another run, a
  teacher that fails its check, a loss that diverged) and a lost DDP process into a short message
  without a traceback. ``SDD_DEBUG=1`` (or ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
- ``log_start()`` says at a run's start what it trains, for how long and where it writes;
  ``log_result()`` prints a finished run's numbers and where its files are.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from sdd_lightning.errors import (
    ConfigError,
    DatasetError,
    RunFolderInUse,
    TeacherCacheError,
    TeacherCheckError,
    TrainingDiverged,
)

__all__ = [
    "DEBUG_ENV",
    "debug_requested",
    "describe_error",
    "log_result",
    "log_start",
    "quiet_warnings",
    "report_error",
    "reported_errors",
    "run_cli",
    "setup_run_logging",
    "short_error",
]

log = logging.getLogger("sdd_lightning")

DEBUG_ENV = "SDD_DEBUG"
_DEBUG_HINT = f"({DEBUG_ENV}=1 shows the full traceback)"

# Warnings about the libraries' own internals or this machine, which no sdd-train option changes.
_NOISE_WARNINGS = (
    # Lightning calls a torch pytree API that torch deprecated
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # always true with a frozen teacher; EvalModeCheck warns about the modules that matter
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # torch suggests fewer loader workers than data.num_workers on a machine with few cores
    r"This DataLoader will create \d+ worker processes in total",
    # pin_memory (on in the data configs, for GPUs) is ignored on a machine without one
    r"'pin_memory' argument is set as true but no accelerator is found",
    # a run resumed in its folder finds its own checkpoints there, by design
    r"Checkpoint directory .* exists and is not empty",
)
# Libraries that give their loggers a console handler of their own at import.
_OWN_CONSOLE_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")
# Log records that advertise rather than inform.
_NOISE_LOGS = re.compile(r"litlogger")


def quiet_warnings() -> None:
    """Ignores the warnings listed in ``_NOISE_WARNINGS`` (any other warning still shows)."""
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings" and isinstance(record.msg, str):
            record.msg = record.msg.rstrip()  # a formatted warning ends with a newline of its own
        return not _NOISE_LOGS.search(str(record.msg))


def setup_run_logging() -> None:
    """Routes Lightning's log and Python warnings into the run's handlers (console and ``train.log``).

    Lightning (and torchmetrics) give their loggers console handlers of their own and stop them from
    propagating when imported before logging is configured (as under Hydra), so nothing they say reaches
    ``train.log``.
    Call this once logging is configured (in the Hydra task function).
    """
    quiet_warnings()
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in _OWN_CONSOLE_LOGGERS:
        library_logger = logging.getLogger(name)
        for handler in list(library_logger.handlers):
            if type(handler) is logging.StreamHandler:
                library_logger.removeHandler(handler)
        library_logger.propagate = True
    for handler in root.handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    logging.captureWarnings(True)


def debug_requested() -> bool:
    """Whether the user asked for full tracebacks: ``SDD_DEBUG=1``, or ``HYDRA_FULL_ERROR=1`` without it."""
    if DEBUG_ENV in os.environ:
        return os.environ[DEBUG_ENV] == "1"
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _original_message(error: BaseException) -> str:
    """The message of an error, without the worker traceback a DataLoader worker wraps around it."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return re.sub(r"^[\w.]*(Error|Exception): ", "", last)


def _run_dir() -> Path | None:
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    return None


_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, *_FULL}


def _lost_process(error: BaseException) -> bool:
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return False
    if isinstance(error, getattr(distributed, "DistError", ())):
        return True
    pattern = r"gloo|NCCL|Connection (reset|closed) by peer|[Tt]imed out"
    return isinstance(error, RuntimeError) and re.search(pattern, str(error)) is not None


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)  # gloo's and NCCL's source locations
    return text.split(". ")[0].rstrip(".")


def describe_error(error: BaseException) -> tuple[str, int] | None:
    """A short message and exit code for an error the user can act on, or ``None`` for any other error.

    Looks through the exception's causes, since Hydra, Lightning and DataLoader workers may wrap it.
    """
    chain = list(_chain(error))
    for cause in chain:
        if isinstance(cause, (ConfigError, MisconfigurationException)):
            return f"sdd-train: configuration error: {cause}", 2
        if isinstance(cause, DatasetError):
            return f"sdd-train: data error: {_original_message(cause)}", 2
        if isinstance(cause, TeacherCheckError):
            return f"sdd-train: teacher check failed: {cause}", 2
        if isinstance(cause, TeacherCacheError):
            return f"sdd-train: teacher cache: {cause}", 2
        if isinstance(cause, RunFolderInUse):
            return f"sdd-train: {cause}", 2
        if isinstance(cause, TrainingDiverged):
            return f"sdd-train: training diverged: {cause}", 1
        if isinstance(cause, OSError) and cause.errno in _UNWRITABLE and cause.filename:
            path = Path(os.fspath(cause.filename)).absolute()
            run_dir = _run_dir()
            full = cause.errno in _FULL
            if run_dir is None or run_dir.absolute() in (path, *path.parents):
                folder = run_dir or path.parent
                fix = (
                    f"free space on the disk of {folder} (or raise the quota) and rerun with the same "
                    f"hydra.run.dir to resume from its last checkpoint, which is intact, or write elsewhere with "
                    f"hydra.run.dir=<folder>"
                    if full
                    else f"the output folder {folder} must be writable: give another with hydra.run.dir=<folder> "
                    "(hydra.sweep.dir=<folder> with -m), or fix its permissions"
                )
            else:
                fix = "free space on its disk" if full else "check the file's permissions"
            return f"sdd-train: cannot use {path}: {cause.strerror}; {fix}", 2
    for cause in chain:
        if _lost_process(cause):
            first_line = _first_sentence(cause)
            run_dir = _run_dir()
            where = f"hydra.run.dir={run_dir}" if run_dir else "the same run folder"
            return (
                f"sdd-train: rank {torch.distributed.get_rank()} lost contact with another process of this "
                f"distributed run ({first_line}); stopping. Its last checkpoint is intact: run the same command "
                f"with {where} to resume",
                1,
            )
    return None


def _unknown_error(error: BaseException) -> tuple[str, int]:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"sdd-train: the run failed: {type(error).__name__}{': ' if first else ''}{first}", 1


def short_error(error: BaseException) -> tuple[str, int]:
    """``describe_error``'s message and exit code, or for any other error its type and first line (exit 1)."""
    return describe_error(error) or _unknown_error(error)


def report_error(error: BaseException) -> tuple[str, int]:
    """Logs a run's failure: a known error's short message, any other error with its traceback, as a bug.

    Call it while handling ``error``. Returns ``short_error(error)``.
    """
    known = describe_error(error)
    if known is None or debug_requested():
        log.error("sdd-train: the run failed", exc_info=error)
    else:
        log.error(f"{known[0]}\n{_DEBUG_HINT}")
    return known or _unknown_error(error)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Within the block, a known error (``describe_error``) ends the process with its short message.

    The message goes through logging (console and ``train.log``). Any other error is logged with its
    traceback, as a bug. With ``SDD_DEBUG=1`` errors propagate unchanged.
    """
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:
        if debug_requested():
            raise
        raise SystemExit(report_error(error)[1]) from None


def run_cli(hydra_main: Callable[[], Any]) -> Any:
    """Runs a ``@hydra.main`` function and reports the errors Hydra would print with a long traceback.

    Errors before the task function runs (e.g. an output folder where Hydra cannot open ``train.log``)
    are reported by Hydra itself, with a traceback; here ``HYDRA_FULL_ERROR=1`` makes Hydra re-raise
    them instead, and they are reported as ``reported_errors`` does. Hydra's own short messages (an
    unknown override or option) are printed as Hydra prints them.
    """
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    debug = debug_requested()
    os.environ[DEBUG_ENV] = "1" if debug else "0"  # DDP processes started later inherit the choice
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return hydra_main()
    except Exception as error:
        if debug:
            raise
        if isinstance(error, CompactHydraException):
            print(error, file=sys.stderr)
            if isinstance(error.__cause__, OmegaConfBaseException):
                print(error.__cause__, file=sys.stderr)
            raise SystemExit(1) from None
        report = describe_error(error)
        if report is None:
            raise
        print(f"{report[0]}\n{_DEBUG_HINT}", file=sys.stderr)
        raise SystemExit(report[1]) from None


def _epochs(count: Any) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}%"


def log_result(results: dict[str, Any], run_dir: str | os.PathLike) -> None:
    """Logs a finished run's accuracies, time and folder (the numbers of ``results.json``, in percent)."""
    parts = [
        ("top-1", _percent(results.get("val/acc1"))),
        ("best top-1", _percent(results.get("val/acc1_best"))),
        ("top-5", _percent(results.get("val/acc5"))),
        ("test top-1 (best checkpoint)", _percent(results.get("test/acc1"))),
        ("teacher top-1", _percent(results.get("teacher/acc1"))),
    ]
    numbers = ", ".join(f"{name} {value}" for name, value in parts if value is not None)
    log.info(
        f"sdd-train: finished {_epochs(results.get('epochs'))} in {results.get('wall_time_s', 0):.0f} s: {numbers}\n"
        f"sdd-train: run folder {Path(run_dir)} (results.json, checkpoints/, train.log)"
    )


# data module class -> how the start line names its data
_DATA_TITLES = {
    "Cifar100DataModule": "CIFAR-100",
    "Cub200DataModule": "CUB-200-2011",
    "ImageNetDataModule": "ImageNet",
    "SyntheticDataModule": "the synthetic shapes set",
}


def log_start(
    *,
    setting: str | None,
    student: str,
    teacher: str | None,
    method: str,
    data_class: str,
    epochs: int,
    run_dir: str | os.PathLike,
    resume_from: str | None = None,
) -> None:
    """One line at a run's start: what it trains, for how many epochs, on what, and where it writes."""
    trains = f"{teacher} -> {student}, {method.upper().replace('_', '-')}" if teacher else f"{student}, no teacher"
    name = f"{setting}: " if setting else ""
    data = _DATA_TITLES.get(data_class, data_class)
    resuming = f" (resuming from {resume_from})" if resume_from else ""
    log.info(f"sdd-train: {name}{trains}, {_epochs(epochs)} on {data}; writing to {Path(run_dir)}{resuming}")
