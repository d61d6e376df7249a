"""Derived random seeds: one independent stream per (seed, epoch, rank, purpose) combination."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed", "indexed_seed"]

_MASK64 = (1 << 64) - 1


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


def indexed_seed(base: int, index: int) -> int:
    """The seed of item ``index`` of a stream whose seed is ``base`` (from :func:`derive_seed`): cheap per item.

    SplitMix64's output function applied to ``base + (index + 1) * golden ratio``: consecutive indices give
    statistically independent seeds, in about a microsecond where :func:`derive_seed` takes ten, which
    matters when every training sample gets a seed of its own.

    Args:
        base: The stream's seed, e.g. ``derive_seed(seed, epoch, purpose)``.
        index: Non-negative item number, e.g. a sample's index in the data set.

    Returns:
        A 63-bit seed for ``torch.Generator.manual_seed``.
    """
    if index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index}")
    z = (base + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1
