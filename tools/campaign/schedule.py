"""What fits a GPU lease: run times predicted from measured epoch times, and the choice of epochs and concurrency.

A *measurement* (a plain dict, stored in the ledger under the device's name) describes one stage's runs when ``k``
of them train at once on the device: ``startup_s`` (launch to the first training step), ``epoch_s`` (one epoch,
training and validation), ``tail_s`` (the last epoch to the process's exit: the test of the best checkpoint and
``results.json``), and what they were computed from. A probe measures them in a stage's first seconds; the runs
themselves replace them with what they observed.

The rules, in one place:

- A run of ``E`` epochs is predicted to take ``startup_s + E * epoch_s * safety + tail_s``.
- A stage's epoch count is fixed by the lease that starts it: the official count when it fits, else as many as fit
  in the time left (the schedule shortened in proportion, :func:`scaled_milestones`); every later run of the stage
  uses the same count, so that its seeds and methods stay comparable.
- A stage starts only with at least ``min_start_fraction`` of a lease's capacity left (or when its full schedule
  fits), and never with fewer than ``min_epochs`` epochs.
- Concurrency: the number of runs trained at once is the largest measured ``k`` whose throughput (``k / epoch_s``)
  beat the next smaller one's by at least ``min_gain`` (:func:`paying_concurrency`); a started stage's later runs
  train as many at once as fit the time left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Wave",
    "decide_wave",
    "epochs_within",
    "measurement_for",
    "paying_concurrency",
    "run_seconds",
    "scaled_milestones",
]

Measurement = Mapping[str, Any]


def scaled_milestones(epochs: int, milestones: list[int], full_epochs: int) -> list[int]:
    """The learning-rate milestones of a schedule shortened from ``full_epochs`` to ``epochs``, in proportion.

    ``[150, 180, 210]`` of 240 become ``[38, 45, 52]`` of 60: each milestone keeps its fraction of the schedule
    (rounded, at least 1), so a shortened run decays its learning rate at the same points of its course.
    """
    if epochs < 1 or full_epochs < 1:
        raise ValueError(f"epochs={epochs}, full_epochs={full_epochs}: both must be at least 1")
    return [max(1, round(m * epochs / full_epochs)) for m in milestones]


def run_seconds(measurement: Measurement, epochs: int, safety: float) -> float:
    """Predicted wall time of one run of ``epochs`` epochs (all ``k`` runs of the measurement end together)."""
    return measurement["startup_s"] + epochs * measurement["epoch_s"] * safety + measurement["tail_s"]


def epochs_within(measurement: Measurement, seconds: float, safety: float) -> int:
    """The most epochs a run can train in ``seconds`` (0 when not even one fits)."""
    room = seconds - measurement["startup_s"] - measurement["tail_s"]
    return max(0, math.floor(room / (measurement["epoch_s"] * safety)))


def _by_k(measurements: Mapping[Any, Measurement]) -> dict[int, Measurement]:
    return {int(k): m for k, m in measurements.items()}


def measurement_for(measurements: Mapping[Any, Measurement], n: int) -> Measurement | None:
    """The measurement that stands for ``n`` runs at once: ``k == n``, else the smallest measured ``k > n``
    (more contention than ``n`` runs see, so the prediction errs long), else ``None``."""
    larger = sorted(k for k in _by_k(measurements) if k >= n)
    return _by_k(measurements)[larger[0]] if larger else None


def paying_concurrency(measurements: Mapping[Any, Measurement], min_gain: float, at_most: int) -> int:
    """How many runs to train at once: up the measured ``k`` (at most ``at_most``) while each step up raised the
    throughput (runs x epochs per second) by at least ``min_gain`` (0.1 = 10 %)."""
    by_k = {k: m for k, m in sorted(_by_k(measurements).items()) if k <= at_most}
    if not by_k:
        raise ValueError(f"no measurement for at most {at_most} concurrent runs")
    ks = list(by_k)
    best = ks[0]
    for k in ks[1:]:
        if k / by_k[k]["epoch_s"] >= (1 + min_gain) * best / by_k[best]["epoch_s"]:
            best = k
        else:
            break
    return best


@dataclass(frozen=True)
class Wave:
    """Runs of one stage to train at once: how many, for how many epochs, and the prediction they rest on.

    ``reason`` is set (and ``runs`` is 0) when nothing of the stage fits; it says why.
    """

    runs: int
    epochs: int
    predicted_s: float
    concurrency_measured: int
    new_stage: bool
    reason: str = ""


def decide_wave(
    *,
    fixed_epochs: int | None,
    pending: int,
    measurements: Mapping[Any, Measurement],
    remaining_s: float,
    capacity_s: float,
    plan: Mapping[str, Any],
) -> Wave:
    """The next wave of a stage: which epoch count and how many of its ``pending`` runs fit ``remaining_s``.

    Args:
        fixed_epochs: the stage's epoch count when an earlier wave fixed it, else ``None`` (a new stage).
        pending: runs of the stage still to train.
        measurements: the stage's measurements on this device, by concurrency ``k``.
        remaining_s: seconds until the runs must have finished.
        capacity_s: the same for a whole lease (for the ``min_start_fraction`` rule).
        plan: the ledger's plan (``full_epochs``, ``safety``, ``min_epochs``, ``min_start_fraction``,
            ``probe.min_gain``).
    """
    safety = plan["safety"]
    if fixed_epochs is not None:
        for n in range(pending, 0, -1):
            measurement = measurement_for(measurements, n)
            if measurement is not None and run_seconds(measurement, fixed_epochs, safety) <= remaining_s:
                return Wave(n, fixed_epochs, run_seconds(measurement, fixed_epochs, safety), measurement["k"], False)
        one = measurement_for(measurements, 1)
        need = f"{run_seconds(one, fixed_epochs, safety):.0f} s" if one else "an unmeasured time"
        return Wave(
            0,
            fixed_epochs,
            0.0,
            0,
            False,
            f"one run of {fixed_epochs} epochs needs {need}, {remaining_s:.0f} s are left",
        )
    k = paying_concurrency(measurements, plan["probe"]["min_gain"], pending)
    measurement = measurement_for(measurements, k)
    epochs = min(plan["full_epochs"], epochs_within(measurement, remaining_s, safety))
    if epochs < plan["full_epochs"] and remaining_s < plan["min_start_fraction"] * capacity_s:
        return Wave(
            0,
            epochs,
            0.0,
            k,
            True,
            f"a new stage starts with at least {plan['min_start_fraction']:.0%} "
            f"of a lease ({plan['min_start_fraction'] * capacity_s:.0f} s) unless its full schedule fits; "
            f"{remaining_s:.0f} s are left, enough for {epochs} of {plan['full_epochs']} epochs",
        )
    if epochs < plan["min_epochs"]:
        return Wave(
            0,
            epochs,
            0.0,
            k,
            True,
            f"only {epochs} epochs fit in {remaining_s:.0f} s (at least {plan['min_epochs']} are required)",
        )
    return Wave(k, epochs, run_seconds(measurement, epochs, safety), k, True)
