"""Training loaders that resume exactly in the middle of an epoch.

A run stopped after batch ``k`` of epoch ``e`` and resumed from its checkpoint must see the batches an
unbroken run sees: the rest of epoch ``e``'s order, with the same augmentation of every image. Three
pieces make that so:

- :class:`EpochSampler` draws each epoch's order from ``(seed, epoch)`` alone and can start an epoch
  part-way through. It is a ``DistributedSampler``, so under DDP Lightning keeps it (it only injects its
  own sampler into loaders that have none) and every rank reads its own shard.
- :class:`SeededSamples` makes every sample's random augmentation a function of ``(seed, epoch, index)``,
  whichever worker process makes it and wherever it falls in the epoch.
- :class:`ResumableEpochs` counts the batches a loader has handed out and gives Lightning a
  ``state_dict`` / ``load_state_dict`` pair; Lightning stores it in the checkpoint
  (``loops.fit_loop.state_dict.combined_loader``) and hands it back on resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from sdd_lightning.data.seeding import derive_seed, indexed_seed

__all__ = ["EpochSampler", "ResumableDataLoader", "ResumableEpochs", "SeededSamples"]

_ORDER_STREAM = 2  # purpose key of the epoch order in derive_seed
_SAMPLE_STREAM = 4  # purpose key of the per-sample augmentation seeds


class EpochSampler(DistributedSampler):
    """One rank's share of every epoch, in an order drawn from ``(seed, epoch)``; resumable part-way.

    The shards are those of ``torch.utils.data.DistributedSampler`` (the order padded to equal shards,
    rank ``r`` taking every ``num_replicas``-th index from ``r``), but the order comes from a seed derived
    from ``(seed, epoch)``, so two runs with neighbouring seeds do not share epochs. Lightning calls
    ``set_epoch`` before every epoch; a loop without Lightning calls it too, or relies on the loaders of
    this module, which move to the next epoch after a complete pass.

    Args:
        size: Number of samples of the data set.
        num_replicas: Number of processes sharing the data.
        rank: This process's global rank.
        shuffle: Draw a new order every epoch; ``False`` keeps the stored order.
        seed: Base seed of the order.
        drop_last: Drop the tail instead of padding to equal shards.
        with_epoch: Yield ``(epoch, index)`` keys (for :class:`SeededSamples`) instead of plain indices.
    """

    def __init__(
        self,
        size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        with_epoch: bool = False,
    ) -> None:
        super().__init__(
            range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.with_epoch = with_epoch
        self._skip = 0

    def order(self) -> list[int]:
        """This rank's indices for the current epoch, from the beginning."""
        size = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _ORDER_STREAM))
            indices = torch.randperm(size, generator=generator).tolist()
        else:
            indices = list(range(size))
        if self.drop_last:
            indices = indices[: self.total_size]
        elif self.total_size > size:
            indices += (indices * -(-self.total_size // size))[: self.total_size - size]
        return indices[self.rank : self.total_size : self.num_replicas]

    def skip_next(self, count: int) -> None:
        """Start the next iteration ``count`` samples into the epoch (once; later ones start at the beginning)."""
        if not 0 <= count <= self.num_samples:
            raise ValueError(f"cannot skip {count} of the epoch's {self.num_samples} samples")
        self._skip = count

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        start, self._skip = self._skip, 0
        indices = self.order()[start:]
        if self.with_epoch:
            return iter([(self.epoch, index) for index in indices])
        return iter(indices)


class SeededSamples(Dataset):
    """``dataset[index]`` for keys ``(epoch, index)``, made with the torch generator seeded by ``(seed, epoch, index)``.

    torchvision's random transforms draw from the process's default torch generator, so which worker made
    a sample and what that worker made before decide its crop and flip. Here each sample gets a generator
    state of its own and the caller's state is put back afterwards, so an image's augmentation in an epoch
    is the same in an unbroken run and in a run resumed in the middle of that epoch, with any number of
    workers. (Transforms that draw from Python's ``random`` or NumPy are not covered; torchvision's
    ``transforms.v2`` draw from torch.)

    Args:
        dataset: The map-style data set whose samples are augmented.
        seed: Base seed of the augmentation.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._epoch_seeds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch not in self._epoch_seeds:
            self._epoch_seeds[epoch] = derive_seed(self.seed, epoch, _SAMPLE_STREAM)
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(indexed_seed(self._epoch_seeds[epoch], index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class ResumableEpochs:
    """What makes a training loader resumable mid-epoch: its position, saved and restored.

    A loader with this mixin has a ``sampler`` (an :class:`EpochSampler`) and a ``batch_size``, and
    implements ``_batches(epoch, first)``: the epoch's batches from batch ``first`` on, after the sampler
    has been told to skip the batches before it. Iterating it yields one epoch; after a complete pass the
    sampler moves to the next epoch (``sampler.set_epoch`` overrides that, as Lightning does every epoch).

    ``state_dict()`` is the epoch in progress and the number of its batches handed out so far. After
    ``load_state_dict``, the next iteration of that same epoch skips those batches; an iteration of another
    epoch (Lightning sets the epoch after loading, and moves on when the saved epoch had ended) starts at
    its beginning. The state is plain integers, so checkpoints still load with ``torch.load(weights_only=True)``.
    """

    sampler: EpochSampler
    batch_size: int

    def _reset_position(self) -> None:
        self._epoch = self.sampler.epoch
        self._handed_out = 0
        self._resume_at: tuple[int, int] | None = None

    def _batches(self, epoch: int, first: int) -> Iterator[Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self._epoch_batches()

    def _epoch_batches(self) -> Iterator[Any]:
        # A generator: nothing happens until the first batch is asked for, by which time Lightning has set
        # the epoch (it calls iter() once before that, at the start of fit).
        epoch = self.sampler.epoch
        first = 0
        if self._resume_at is not None:
            resume_epoch, resume_batch = self._resume_at
            self._resume_at = None
            if resume_epoch == epoch:
                first = resume_batch
        self._epoch, self._handed_out = epoch, first
        self.sampler.skip_next(first * self.batch_size)
        for batch in self._batches(epoch, first):
            self._handed_out += 1
            yield batch
        self.sampler.set_epoch(epoch + 1)

    def state_dict(self) -> dict[str, int]:
        """The position in the training data: the epoch in progress and the batches of it handed out."""
        return {
            "epoch": self._epoch,
            "batches": self._handed_out,
            "batch_size": self.batch_size,
            "num_replicas": self.sampler.num_replicas,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a saved position: the next iteration of the saved epoch skips its handed-out batches.

        A position saved with another batch size or number of processes cannot be mapped onto this loader's
        shards; it is then ignored with a warning: the rest of the interrupted epoch is read from the
        beginning of the epoch's order (Lightning stops it after the batches the epoch still owes).
        """
        saved = (state_dict["batch_size"], state_dict["num_replicas"])
        if saved != (self.batch_size, self.sampler.num_replicas):
            warnings.warn(
                f"the checkpoint's data position was saved with batch_size={saved[0]} on {saved[1]} process(es), "
                f"this run has batch_size={self.batch_size} on {self.sampler.num_replicas}: the rest of the "
                "interrupted epoch is read from the beginning of its order, not where it stopped (resume with the "
                "same data.batch_size and number of devices for an exact resume)",
                stacklevel=2,
            )
            return
        epoch, batches = state_dict["epoch"], state_dict["batches"]
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._epoch, self._handed_out = epoch, batches
        self._resume_at = (epoch, batches) if batches else None


class ResumableDataLoader(ResumableEpochs, DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` that resumes mid-epoch (see :class:`ResumableEpochs`).

    Takes the ``DataLoader`` arguments; ``sampler`` is an :class:`EpochSampler` (a ``SequentialSampler``,
    which Lightning swaps in for ``overfit_batches``, becomes one that keeps the stored order). Its batches
    are those of a plain ``DataLoader`` with that sampler, workers and all.
    """

    def __init__(self, dataset: Dataset, *, sampler: EpochSampler | SequentialSampler, **kwargs: Any) -> None:
        if isinstance(sampler, SequentialSampler):  # what Lightning's overfit_batches swaps in: the stored order
            sampler = EpochSampler(len(dataset), shuffle=False, with_epoch=isinstance(dataset, SeededSamples))
        if not isinstance(sampler, EpochSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._reset_position()

    def _batches(self, epoch: int, first: int) -> Iterator[Any]:
        return DataLoader.__iter__(self)
