"""A data loader for small image sets held whole in the training device's memory (CIFAR-size sets).

Instead of CPU workers decoding and augmenting one sample at a time, the ``uint8`` images sit on the
device once; each batch is an index gather followed by the batched crop/flip and normalisation of
:mod:`sdd_lightning.data.gpu_augment`. It yields batches of the same form as the ``DataLoader`` path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from sdd_lightning.data.gpu_augment import normalize_batch, random_crop_flip
from sdd_lightning.data.resumable import EpochSampler, ResumableEpochs
from sdd_lightning.data.seeding import derive_seed

__all__ = ["DeviceResidentLoader"]

_AUGMENT_STREAM = 1  # purpose key of the augmentation generator in derive_seed


class DeviceResidentLoader(ResumableEpochs):
    """Iterable of normalised ``(images float32 (B, 3, H, W), labels int64 (B,))`` batches on one device.

    Each rank of a distributed run holds its own loader; the rank's share of every epoch is chosen by an
    :class:`~sdd_lightning.data.resumable.EpochSampler` (``sampler`` attribute, a ``DistributedSampler``),
    so the shards are disjoint (up to the padding that makes them equal in length, as with Lightning's
    injected sampler) and the order is a function of ``(seed, epoch)`` only. Lightning calls
    ``sampler.set_epoch`` before every epoch; outside Lightning a complete pass moves to the next epoch,
    and ``loader.sampler.set_epoch(epoch)`` chooses one. The crop/flip draws of batch ``b`` come from a
    generator on the device seeded by ``(seed, epoch, rank, b)``, so a run is reproducible on a given device
    type, and a run resumed at batch ``b`` (``state_dict`` / ``load_state_dict``, which Lightning saves in
    the checkpoint) draws what an unbroken run draws.

    Args:
        images: The whole split, ``uint8`` ``(N, 3, H, W)``, on the CPU or already on ``device``.
        labels: Class indices ``(N,)``.
        batch_size: Images per batch on this device.
        mean: Per-channel mean for normalisation (of values in [0, 1]).
        std: Per-channel standard deviation for normalisation.
        shuffle: Draw a new order every epoch (training) or keep the stored order (evaluation).
        augment: Apply ``random_crop_flip`` with ``padding`` to every batch.
        padding: Padding of the random crop.
        drop_last: Drop the last incomplete batch.
        seed: Base seed of the order and the augmentation.
        rank: This process's global rank.
        world_size: Number of processes sharing the data.
        device: Where the data and the batches live; ``None`` keeps the device of ``images``.
        source_index: With it, batches are ``(images, labels, views)``: ``views`` int64 ``(B, 4)`` holds each
            image's ``source_index`` entry and the view it drew, ``(dy, dx, flip)`` (without augmentation
            ``(padding, padding, 0)``, the image itself); see :mod:`sdd_lightning.data.views`. The draws are
            the same with and without it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        padding: int = 4,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        source_index: torch.Tensor | None = None,
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images
        self.labels = labels.long()
        self.batch_size = batch_size
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.padding = padding
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.source_index = source_index
        self.sampler = EpochSampler(images.shape[0], num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_sampler = None  # read by Lightning's DataLoader checks, as on a DataLoader without one
        self._resident: tuple[torch.Tensor, ...] | None = None
        self._reset_position()

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        samples = len(self.sampler)
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def _on_device(self) -> tuple[torch.Tensor, ...]:
        """The images, labels and normalisation constants on the device, copied there once."""
        if self._resident is None:
            self._resident = tuple(t.to(self.device) for t in (self.images, self.labels, self.mean, self.std))
        return self._resident

    def _batches(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, ...]]:
        images, labels, mean, std = self._on_device()
        source_index = self.source_index.to(self.device) if self.source_index is not None else None
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)  # from batch `first` on
        for batch in range(first, len(self)):
            start = (batch - first) * self.batch_size
            index = order[start : start + self.batch_size]
            x = images.index_select(0, index)
            views = None
            if self.augment:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(derive_seed(self.seed, epoch, self.rank, _AUGMENT_STREAM, batch))
                x, views = random_crop_flip(x, self.padding, generator, return_views=True)
            batch_labels = labels.index_select(0, index)
            if source_index is None:
                yield normalize_batch(x, mean, std), batch_labels
                continue
            if views is None:  # no augmentation: every image is the centre crop of its padded self, unflipped
                views = torch.tensor([self.padding, self.padding, 0], device=self.device).expand(len(index), 3)
            source = source_index.index_select(0, index)[:, None]
            yield normalize_batch(x, mean, std), batch_labels, torch.cat([source, views], 1)
