"""Derived random seeds: one independent stream per (seed, epoch, rank, purpose) combination."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed determined by ``keys``, statistically independent for different keys.

    Used to give every epoch, rank and purpose (shuffling, augmentation, generation) its own random
    stream from the user's one ``seed`` without the collisions of ``seed + rank`` style arithmetic.

    Args:
        keys: Non-negative integers, e.g. ``(seed, epoch, rank)``.

    Returns:
        A seed for ``torch.Generator.manual_seed``.
    """
    if any(k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1
