"""A validation set held out of a training split: stratified by class, fixed by its own seed.

Model selection and hyper-parameter searches that look at the test set overfit it; holding out part of
the training split for them keeps the test set for one final measurement. The held-out part is the
same on every run with the same ``val_split`` and ``val_split_seed``, whatever the run's own ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import torch

from sdd_lightning.data.seeding import derive_seed

__all__ = ["check_val_split", "holdout_size", "stratified_holdout"]

_HOLDOUT_STREAM = 3  # purpose key of the hold-out permutations in derive_seed


def check_val_split(val_split: int | float | None) -> None:
    """Refuse a ``val_split`` that is neither ``None``, a positive number of images nor a fraction in (0, 1).

    Raises:
        ValueError: The value and the accepted forms, naming ``val_split``.
    """
    if val_split is None:
        return
    accepted = "give a number of images (e.g. val_split=5000), a fraction in (0, 1) (e.g. 0.1), or null"
    if isinstance(val_split, bool) or not isinstance(val_split, Real):
        raise ValueError(f"val_split={val_split!r} is not a number: {accepted}")
    if isinstance(val_split, Integral):
        if val_split < 1:
            raise ValueError(f"val_split={val_split} holds out no image: {accepted}")
    elif not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split={val_split} is a fraction outside (0, 1): {accepted}")


def holdout_size(val_split: int | float, num_images: int) -> int:
    """Images to hold out of ``num_images``: ``val_split`` itself, or that fraction of them (rounded).

    Raises:
        ValueError: ``val_split`` is malformed, or leaves no image for training or none for validation.
    """
    check_val_split(val_split)
    size = int(val_split) if isinstance(val_split, Integral) else round(val_split * num_images)
    if not 1 <= size < num_images:
        raise ValueError(
            f"val_split={val_split} holds out {size} of the {num_images} training images; at least one image must "
            f"be held out and one left for training (choose val_split below {num_images}, or a smaller fraction)"
        )
    return size


def stratified_holdout(
    labels: Sequence[int] | torch.Tensor, val_split: int | float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the indices of a labelled training split into a training part and a held-out validation part.

    Every class gives the held-out part its share of ``holdout_size(val_split, len(labels))`` images,
    proportional to its size (largest remainders settle the rounding, so the total is exact). Which
    images of a class are held out comes from a permutation seeded by ``(seed, class)`` alone, so the
    split is the same on every run, and a larger ``val_split`` holds out a superset of a smaller one's.

    Args:
        labels: The class index of every image of the split, in its stored order.
        val_split: Images to hold out (an ``int``), or the fraction of them (a ``float`` in (0, 1)).
        seed: Seed of the choice (``val_split_seed``), independent of the run's seed.

    Returns:
        ``(train_indices, val_indices)``: disjoint, sorted ``int64`` tensors that cover ``range(len(labels))``.

    Raises:
        ValueError: ``val_split`` is malformed or too large for the split, or ``seed`` is negative.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    size = holdout_size(val_split, len(labels))
    if labels.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, got {int(labels.min())}")
    counts = torch.bincount(labels)
    total = len(labels)
    # largest remainder allocation of `size` over the classes, in exact integer arithmetic
    share = torch.div(counts * size, total, rounding_mode="floor")
    remainder = counts * size - share * total
    missing = size - int(share.sum())
    by_remainder = sorted(range(len(counts)), key=lambda c: (-int(remainder[c]), c))
    share[by_remainder[:missing]] += 1
    held = []
    for cls in torch.nonzero(share).flatten().tolist():
        members = torch.nonzero(labels == cls).flatten()
        generator = torch.Generator().manual_seed(derive_seed(seed, _HOLDOUT_STREAM, cls))
        held.append(members[torch.randperm(len(members), generator=generator)[: int(share[cls])]])
    is_held = torch.zeros(total, dtype=torch.bool)
    is_held[torch.cat(held)] = True
    return torch.nonzero(~is_held).flatten(), torch.nonzero(is_held).flatten()
