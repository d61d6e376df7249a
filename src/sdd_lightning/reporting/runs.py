"""The records sdd-summary works on: one run folder (``Run``) and one setting over its seeds (``SettingRow``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PUBLISHED_METRIC", "Run", "SettingRow"]


# What the SDD paper reports when a results.json does not say: the best epoch's top-1.
DEFAULT_PUBLISHED_METRIC = "best"


@dataclass
class Run:
    """One run folder: its status, the setting it belongs to, its seed, accuracies and validation curve.

    ``status`` is ``finished``, ``interrupted``, ``failed`` or ``diverged`` (from results.json; a failed or
    diverged job's results.json holds its ``overrides`` and a short ``error``), or ``unfinished`` when the folder
    has no readable results.json (the run is still going, or died without writing one).
    """

    folder: Path
    status: str
    setting: str
    seed: int | None
    results: dict[str, Any] = field(default_factory=dict)
    published: float | None = None
    published_top5: float | None = None
    published_metric: str = DEFAULT_PUBLISHED_METRIC
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def percent(self, key: str) -> float | None:
        """An accuracy of results.json in percent (``None`` when the run did not record it)."""
        value = self.results.get(key)
        return None if value is None else 100.0 * float(value)


@dataclass
class SettingRow:
    """One setting: its finished runs (averaged) and the others (listed)."""

    setting: str
    finished: list[Run]
    others: list[Run]

    @property
    def n(self) -> int:
        return len(self.finished)

    @property
    def seeds(self) -> list[int | None]:
        return sorted((r.seed for r in self.finished), key=_seed_order)

    def stats(self, key: str) -> tuple[float, float | None, int] | None:
        """Mean, sample standard deviation (``None`` for one value) and count of an accuracy, in percent."""
        values = [v for v in (r.percent(key) for r in self.finished) if v is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)

    @property
    def published(self) -> float | None:
        return next((r.published for r in self.finished + self.others if r.published is not None), None)

    @property
    def published_top5(self) -> float | None:
        return next((r.published_top5 for r in self.finished + self.others if r.published_top5 is not None), None)

    @property
    def published_metric(self) -> str:
        runs = self.finished + self.others
        return next((r.published_metric for r in runs if r.published is not None), DEFAULT_PUBLISHED_METRIC)

    def difference(self) -> float | None:
        """Our mean of the number the paper reports (best or last epoch top-1) minus the published one."""
        key = "val/acc1_best" if self.published_metric == "best" else "val/acc1"
        ours = self.stats(key)
        return None if ours is None or self.published is None else ours[0] - self.published

    def difference_top5(self) -> float | None:
        """Our mean top-5 of the epoch the paper reports minus the published top-5 (``None``: none published)."""
        key = "val/acc5_best" if self.published_metric == "best" else "val/acc5"
        ours = self.stats(key)
        return None if ours is None or self.published_top5 is None else ours[0] - self.published_top5

    @property
    def epochs(self) -> list[int]:
        return sorted({int(r.results["epochs"]) for r in self.finished if r.results.get("epochs") is not None})


def _seed_order(seed: int | None) -> tuple[bool, int]:
    return seed is None, seed or 0
