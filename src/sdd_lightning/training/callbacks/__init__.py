"""Every callback a run uses, by what it looks after.

- ``health``: ``FiniteLossCheck`` stops at the first non-finite loss; ``EvalModeCheck`` warns about training
  modules left in eval mode.
- ``resume``: the checkpoint and resume callbacks (``LastCheckpoint``, ``RNGStateCallback``, ``ScheduleCheck``,
  ``DistributedStop``, ``RunRecord``, ``StaleTemporaryCleanup``) and ``resume_callbacks()``, the set every run gets.
- ``logs``: ``LogContinuation`` tells the resumable loggers where a resumed run starts writing.
- ``region_maps``: ``RegionMaps`` draws the regions SDD distils, every few epochs.
"""

from sdd_lightning.errors import TrainingDiverged
from sdd_lightning.training.callbacks.health import EvalModeCheck, FiniteLossCheck
from sdd_lightning.training.callbacks.logs import LogContinuation
from sdd_lightning.training.callbacks.region_maps import RegionMaps
from sdd_lightning.training.callbacks.resume import (
    DistributedStop,
    LastCheckpoint,
    RNGStateCallback,
    RunRecord,
    ScheduleCheck,
    StaleTemporaryCleanup,
    reconcile_schedule,
    resume_callbacks,
)

__all__ = [
    "DistributedStop",
    "EvalModeCheck",
    "FiniteLossCheck",
    "LastCheckpoint",
    "LogContinuation",
    "RNGStateCallback",
    "RegionMaps",
    "RunRecord",
    "ScheduleCheck",
    "StaleTemporaryCleanup",
    "TrainingDiverged",
    "reconcile_schedule",
    "resume_callbacks",
]
