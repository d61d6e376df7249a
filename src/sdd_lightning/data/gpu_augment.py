"""Batched augmentation on the device that holds the batch: per-image random crop and flip, normalisation.

These are the vectorised counterparts of torchvision's per-sample ``RandomCrop(padding=p)``,
``RandomHorizontalFlip`` and ``ToDtype`` + ``Normalize``: they run as a handful of tensor kernels on
a whole batch, so a data set held in GPU memory can be augmented without CPU workers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = ["draw_crop_flip", "normalize_batch", "random_crop_flip"]


def draw_crop_flip(
    batch: int, padding: int, generator: torch.Generator | None = None, *, flip: bool = True, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of :func:`random_crop_flip` for ``batch`` images: offsets ``(2, B)`` and flips ``(B,)``.

    Row and column offsets are uniform in ``[0, 2 * padding]``, drawn in that order before the flips (all
    ``False`` when ``flip`` is off), from ``generator`` (which may live on another device than ``device``).
    """
    param_device = generator.device if generator is not None else device
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=param_device).to(device)
    if not flip:
        return offsets, torch.zeros(batch, dtype=torch.bool, device=device)
    flipped = (torch.rand(batch, generator=generator, device=param_device) < 0.5).to(device)
    return offsets, flipped


def random_crop_flip(
    images: torch.Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    fill: float = 0,
    return_views: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Randomly crop (after constant padding) and horizontally flip every image of a batch independently.

    Equivalent in distribution to applying ``RandomCrop((H, W), padding=padding, fill=fill)`` then
    ``RandomHorizontalFlip(0.5)`` to each image: every image gets its own offset, uniform over the
    ``2 * padding + 1`` positions per axis, and its own coin flip. The batch is padded once and the
    crops are gathered with one indexing operation (the flip is a reversed column index), so the
    cost does not grow with a Python loop over images.

    Args:
        images: A batch ``(B, C, H, W)`` of any dtype (typically ``uint8``) on any device.
        padding: Pixels of padding on every side; the crop keeps the size ``(H, W)``.
        generator: Source of the offsets and flips, for reproducible batches. It may live on the
            images' device (fastest) or on the CPU (same crops on every device, at the cost of a
            tiny host-to-device copy); ``None`` uses the global generator of the images' device.
        flip: Whether to flip half of the images horizontally.
        fill: Value of the padded border.
        return_views: Also return each image's view ``(B, 3)`` int64: row offset, column offset (both in
            ``[0, 2 * padding]``, in the padded image) and flip (0 or 1). The draws are the same either way.

    Returns:
        The augmented batch, same shape, dtype and device as ``images`` (and the views with ``return_views``).
    """
    if images.ndim != 4:
        raise ValueError(f"random_crop_flip expects a batch (B, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, channels, height, width = images.shape
    device = images.device
    offsets, flipped = draw_crop_flip(batch, padding, generator, flip=flip, device=device)
    rows = offsets[0, :, None] + torch.arange(height, device=device)  # (B, H) rows of the padded image
    cols = offsets[1, :, None] + torch.arange(width, device=device)  # (B, W)
    cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded = F.pad(images, (padding, padding, padding, padding), value=fill) if padding else images
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    out = padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]
    if return_views:
        return out, torch.stack([offsets[0], offsets[1], flipped.long()], 1)
    return out


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8`` batch to normalised ``float32``: the same arithmetic as ``ToDtype(scale=True)`` + ``Normalize``.

    Args:
        images: ``(B, C, H, W)`` ``uint8`` (scaled by 1/255) or floating point in [0, 1].
        mean: Per-channel mean, shape ``(C, 1, 1)``, on the images' device (kept there by the caller
            so that no host-to-device copy happens per batch).
        std: Per-channel standard deviation, same shape and device as ``mean``.

    Returns:
        ``(images / 255 - mean) / std`` as ``float32``.
    """
    return TF.to_dtype(images, torch.float32, scale=True).sub(mean).div_(std)
