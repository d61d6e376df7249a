"""A procedurally generated "shapes" data set for the quickstart: no files, no network.

Every 32x32 RGB image shows two to four small objects of different kinds (disks, rings, frames,
crosses, striped or chequered patches, ...) in different quadrants of a noisy, shaded background.
Exactly one object, the *target*, is painted in the target colour (red-ish); the label is its kind.
The other objects are distractors of other kinds in other colours. A classifier therefore has to find
the target and recognise its shape while ignoring the rest, and the evidence for the label sits in one
region of the image, the situation the scale-decoupled (regional) logits of SDD are about.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdd_lightning.data.in_memory import InMemoryImageDataModule
from sdd_lightning.data.seeding import derive_seed
from sdd_lightning.data.splits import holdout_size

__all__ = ["SHAPES_MEAN", "SHAPES_STD", "SHAPE_KINDS", "SyntheticDataModule", "generate_shapes"]

# Per-channel statistics of the default configuration (measured on 10,000 images of data_seed 0).
SHAPES_MEAN = (0.425, 0.401, 0.402)
SHAPES_STD = (0.190, 0.179, 0.179)

_CHUNK = 256  # images rendered per vectorised step: small enough to stay in cache, large enough to vectorise

# Signed distance-like functions of the object's local coordinates (u, v in [-1, 1], v pointing down):
# negative inside the shape, roughly in units of the object's half size.
_Sdf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _box(u: torch.Tensor, v: torch.Tensor, half_u: float, half_v: float) -> torch.Tensor:
    return torch.maximum(u.abs() - half_u, v.abs() - half_v)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # apex (0, -0.9), base corners (+-0.9, 0.7); the slanted edges' outward normal is (1.6, -0.9)/|.|
    slant = (1.6 * u.abs() - 0.9 * (v + 0.9)) / math.hypot(1.6, 0.9)
    return torch.maximum(slant, v - 0.7)


def _textured(u: torch.Tensor, v: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """A square patch showing ``pattern`` (positive where painted)."""
    return torch.maximum(_box(u, v, 0.85, 0.85), -pattern)


SHAPE_KINDS: dict[str, _Sdf] = {
    "disk": lambda u, v: torch.hypot(u, v) - 0.9,
    "ring": lambda u, v: (torch.hypot(u, v) - 0.7).abs() - 0.22,
    "square": lambda u, v: _box(u, v, 0.8, 0.8),
    "frame": lambda u, v: (torch.maximum(u.abs(), v.abs()) - 0.68).abs() - 0.2,
    "diamond": lambda u, v: (u.abs() + v.abs() - 1.0) / math.sqrt(2),
    "triangle": _triangle,
    "plus": lambda u, v: torch.minimum(_box(u, v, 0.25, 0.9), _box(u, v, 0.9, 0.25)),
    "cross": lambda u, v: torch.minimum(
        _box((u + v) / math.sqrt(2), (u - v) / math.sqrt(2), 0.22, 0.95),
        _box((u + v) / math.sqrt(2), (u - v) / math.sqrt(2), 0.95, 0.22),
    ),
    "two_bars": lambda u, v: torch.maximum(u.abs() - 0.9, (v.abs() - 0.5).abs() - 0.2),
    "vertical_stripes": lambda u, v: _textured(u, v, torch.cos(u * 2.5 * math.pi)),
    "checker": lambda u, v: _textured(u, v, torch.sin(u * 1.5 * math.pi) * torch.sin(v * 1.5 * math.pi)),
    "diagonal_stripes": lambda u, v: _textured(u, v, torch.cos((u + v) * 1.8 * math.pi)),
    "dots": lambda u, v: torch.hypot(u.abs() - 0.5, v.abs() - 0.5) - 0.33,
    "half_disk": lambda u, v: torch.maximum(torch.hypot(u, v + 0.3) - 0.9, v - 0.3),
    "ell": lambda u, v: torch.minimum(_box(u + 0.6, v, 0.25, 0.9), _box(u, v - 0.6, 0.9, 0.25)),
    "tee": lambda u, v: torch.minimum(_box(u, v + 0.6, 0.9, 0.25), _box(u, v, 0.25, 0.9)),
}


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """HSV (all in [0, 1], any shape) to RGB in a new last dimension of size 3."""
    k = (torch.tensor([5.0, 3.0, 1.0], device=hue.device) + hue[..., None] * 6) % 6
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value[..., None] * (1 - saturation[..., None] * ramp)


def generate_shapes(
    num_images: int,
    *,
    num_classes: int = 16,
    seed: int = 0,
    min_objects: int = 2,
    max_objects: int = 4,
    object_size: tuple[float, float] = (9.0, 14.0),
    max_rotation: float = 20.0,
    hue_margin: float = 0.12,
    target_hue_jitter: float = 0.04,
    noise_std: float = 0.06,
    background_contrast: float = 0.35,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate a balanced shapes set; the same arguments always give the same tensors.

    Args:
        num_images: Images to generate.
        num_classes: Object kinds in use (the first ``num_classes`` of ``SHAPE_KINDS``, 2 to 16).
        seed: Seed of everything random.
        min_objects: Fewest objects per image, the target included (1 to 4).
        max_objects: Most objects per image (up to 4, one per quadrant).
        object_size: Range of the objects' side length in pixels.
        max_rotation: Objects are rotated by up to this many degrees either way.
        hue_margin: Distractor hues keep at least this distance (fraction of the colour wheel) from
            the target hue; smaller is harder.
        target_hue_jitter: The target's hue varies this much around pure red.
        noise_std: Standard deviation of the per-pixel (uniform) noise, in intensity units of [0, 1].
        background_contrast: Amplitude of the smooth, coloured background variation.

    Returns:
        ``uint8`` images ``(num_images, 3, 32, 32)`` and ``int64`` labels ``(num_images,)``.
    """
    _check_knobs(num_classes, min_objects, max_objects, object_size)
    kinds = list(SHAPE_KINDS.values())[:num_classes]
    generator = torch.Generator().manual_seed(derive_seed(seed))
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=generator)]
    images = torch.empty(num_images, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, num_images, _CHUNK):
        stop = min(start + _CHUNK, num_images)
        images[start:stop] = _render_chunk(
            labels[start:stop],
            kinds,
            generator,
            min_objects=min_objects,
            max_objects=max_objects,
            object_size=object_size,
            max_rotation=max_rotation,
            hue_margin=hue_margin,
            target_hue_jitter=target_hue_jitter,
            noise_std=noise_std,
            background_contrast=background_contrast,
        )
    return images, labels


def _check_knobs(num_classes: int, min_objects: int, max_objects: int, object_size: Sequence[float]) -> None:
    if not 2 <= num_classes <= len(SHAPE_KINDS):
        raise ValueError(f"num_classes must be in 2..{len(SHAPE_KINDS)}, got {num_classes}")
    if not 1 <= min_objects <= max_objects <= 4:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 4, got {min_objects}, {max_objects}")
    if len(object_size) != 2 or not 2 <= object_size[0] <= object_size[1] <= 16:
        raise ValueError(f"object_size must be (min, max) pixels with 2 <= min <= max <= 16, got {object_size}")


def _render_chunk(
    labels: torch.Tensor,
    kinds: list[_Sdf],
    generator: torch.Generator,
    *,
    min_objects: int,
    max_objects: int,
    object_size: tuple[float, float],
    max_rotation: float,
    hue_margin: float,
    target_hue_jitter: float,
    noise_std: float,
    background_contrast: float,
) -> torch.Tensor:
    """Draw the scene parameters of ``len(labels)`` images and rasterise them (see ``generate_shapes``)."""
    n, size, slots = len(labels), 32, 4

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * (high - low) + low

    # Background: a grey level, a faint tint, a smooth random colour field, shading.
    base = uniform(n, 1, 1, 1, low=0.2, high=0.6) + uniform(n, 3, 1, 1, low=-0.06, high=0.06)
    field = F.interpolate(uniform(n, 3, 4, 4, low=-0.5, high=0.5), size=size, mode="bilinear", align_corners=False)
    canvas = (base + background_contrast * field).clamp(0, 1)

    # Objects: slot 0 is the target; each slot takes its own quadrant.
    count = torch.randint(min_objects, max_objects + 1, (n,), generator=generator)
    active = torch.arange(slots)[None, :] < count[:, None]
    quadrant = torch.argsort(torch.rand(n, slots, generator=generator), dim=1)
    half = uniform(n, slots, low=object_size[0] / 2, high=object_size[1] / 2)
    room = (size / 4 - half).clamp(min=0) + 2  # objects may reach 2 px into a neighbouring quadrant
    centre_y = (quadrant // 2) * (size / 2) + size / 4 + uniform(n, slots, low=-1, high=1) * room
    centre_x = (quadrant % 2) * (size / 2) + size / 4 + uniform(n, slots, low=-1, high=1) * room
    angle = uniform(n, slots, low=-1, high=1) * math.radians(max_rotation)
    num_kinds = len(kinds)
    # Distractor kinds: uniform over the kinds other than the label.
    kind = (labels[:, None] + torch.randint(1, num_kinds, (n, slots), generator=generator)) % num_kinds
    kind[:, 0] = labels
    # Colours: the target red-ish, distractors at least hue_margin away from red.
    hue = hue_margin + uniform(n, slots) * (1 - 2 * hue_margin)
    hue[:, 0] = uniform(n, low=-target_hue_jitter, high=target_hue_jitter) % 1
    saturation, value = uniform(n, slots, low=0.45, high=1.0), uniform(n, slots, low=0.45, high=1.0)
    saturation[:, 0], value[:, 0] = uniform(n, low=0.7, high=1.0), uniform(n, low=0.7, high=1.0)  # a visible target
    colour = _hsv_to_rgb(hue, saturation, value)

    # Rasterise only the objects in use, grouped by kind: one batched distance evaluation per kind.
    obj_image, obj_slot = active.nonzero(as_tuple=True)
    obj_kind = kind[obj_image, obj_slot]
    order = torch.argsort(obj_kind, stable=True)
    obj_image, obj_slot, obj_kind = obj_image[order], obj_slot[order], obj_kind[order]
    scale = half[obj_image, obj_slot][:, None, None]
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dy = grid[None, :, None] - centre_y[obj_image, obj_slot][:, None, None]  # (objects, 32, 1)
    dx = grid[None, None, :] - centre_x[obj_image, obj_slot][:, None, None]  # (objects, 1, 32)
    theta = angle[obj_image, obj_slot][:, None, None]
    u = (theta.cos() * dx + theta.sin() * dy) / scale  # rotated, in units of the half size
    v = (theta.cos() * dy - theta.sin() * dx) / scale
    distance = torch.empty_like(u)
    bounds = torch.cumsum(torch.bincount(obj_kind, minlength=num_kinds), 0).tolist()
    for index, (lo, hi) in enumerate(zip([0, *bounds[:-1]], bounds, strict=True)):
        if hi > lo:
            distance[lo:hi] = kinds[index](u[lo:hi], v[lo:hi])
    coverage = (0.5 - distance * scale).clamp_(0, 1)  # distance in pixels -> 1-pixel anti-aliased edge
    shade = 1 + 0.15 * uniform(len(order), 1, 1, low=-1, high=1) * v.clamp(-1, 1)  # a light vertical gradient
    alpha = torch.zeros(n, slots, size, size)
    alpha[obj_image, obj_slot] = coverage
    # "Over" compositing with slot 0 (the target) on top: a slot shows through the slots above it.
    transmittance = torch.cumprod(1 - alpha, dim=1)
    weight = alpha * torch.cat([torch.ones(n, 1, size, size), transmittance[:, :-1]], dim=1)
    weight[obj_image, obj_slot] *= shade
    objects = torch.bmm(weight.flatten(2).transpose(1, 2), colour).transpose(1, 2).view(n, 3, size, size)
    canvas = canvas * transmittance[:, -1:] + objects
    # Uniform noise with standard deviation noise_std (cheaper to draw than Gaussian noise).
    canvas += (torch.rand(canvas.shape, generator=generator) - 0.5) * (noise_std * math.sqrt(12))
    return canvas.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


class SyntheticDataModule(InMemoryImageDataModule):
    """The built-in "shapes" set: a demonstration data set for the quickstart, **not a benchmark**.

    Procedurally generated 32x32 RGB images (see :func:`generate_shapes`): two to four small objects
    of different kinds in different quadrants of a noisy, shaded background; the label is the kind
    of the one red object, the others are distractors. Needs no files and no network, is generated
    in memory in about a second, and is fully determined by ``data_seed`` and the difficulty knobs.
    Because the label lives in one region and the rest of the image carries other objects' evidence,
    regional (scale-decoupled) logits differ from the global one, which is what SDD distils.

    Numbers measured on it say whether the code works and how methods compare on a toy problem, not
    how they compare on real images. The difficulty knobs are constructor arguments so that a
    teacher-student gap can be tuned. With the defaults (SGD, lr 0.05 cosine, batch 64, crop and
    flip, CPU): a linear classifier stays near chance (about 7%), ``tiny_cnn`` reaches about 79% after
    5 epochs and ``small_cnn`` about 98% after 4.

    Args:
        root: Unused (accepted so that every data config has the same keys).
        num_classes: Object kinds, hence classes (2 to 16).
        num_train: Training images.
        num_val: Test images (also the validation set unless ``val_split`` holds one out of training).
        data_seed: Seed of the generated images (the training ``seed`` only orders and augments them).
        device_resident: Keep the set on the training device and augment there (the default: the set
            is tiny, and on a CPU this avoids worker processes altogether).
        augment: Random crop (padding 4) and horizontal flip for training, as for CIFAR.
        padding: Padding of the random crop.
        min_objects: Fewest objects per image, the target included.
        max_objects: Most objects per image (at most 4).
        object_size: Range of the objects' side in pixels; smaller is harder.
        max_rotation: Largest rotation of an object, in degrees.
        hue_margin: Least hue distance of a distractor from the target's red; smaller is harder.
        target_hue_jitter: Hue variation of the target around pure red.
        noise_std: Standard deviation of the pixel noise; larger is harder.
        background_contrast: Amplitude of the smooth coloured background; larger is harder.
        **loader_options: The loader settings of :class:`~sdd_lightning.data.base.ClassificationDataModule`
            (``batch_size`` per device, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``seed``,
            ``drop_last``, ``persistent_workers``, ``val_split``, ``val_split_seed``).
    """

    name = "synthetic"
    mean = SHAPES_MEAN
    std = SHAPES_STD

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        num_classes: int = 16,
        num_train: int = 10_000,
        num_val: int = 2_000,
        data_seed: int = 0,
        device_resident: bool = True,
        augment: bool = True,
        padding: int = 4,
        min_objects: int = 2,
        max_objects: int = 4,
        object_size: Sequence[float] = (9.0, 14.0),
        max_rotation: float = 20.0,
        hue_margin: float = 0.12,
        target_hue_jitter: float = 0.04,
        noise_std: float = 0.06,
        background_contrast: float = 0.35,
        **loader_options: Any,
    ) -> None:
        super().__init__(root, device_resident=device_resident, augment=augment, padding=padding, **loader_options)
        _check_knobs(num_classes, min_objects, max_objects, object_size)
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
        if data_seed < 0:
            raise ValueError(f"data_seed must be >= 0, got {data_seed}")
        if self.val_split is not None:
            holdout_size(self.val_split, num_train)  # the size is known now: refuse a too large val_split early
        self.num_classes = num_classes
        self.num_train = num_train
        self.num_val = num_val
        self.data_seed = data_seed
        self.class_names = list(SHAPE_KINDS)[:num_classes]
        self.generator_kwargs = {
            "num_classes": num_classes,
            "min_objects": min_objects,
            "max_objects": max_objects,
            "object_size": (float(object_size[0]), float(object_size[1])),
            "max_rotation": max_rotation,
            "hue_margin": hue_margin,
            "target_hue_jitter": target_hue_jitter,
            "noise_std": noise_std,
            "background_contrast": background_contrast,
        }

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        count = self.num_train if train else self.num_val
        split_seed = derive_seed(self.data_seed, 0 if train else 1)
        return generate_shapes(count, seed=split_seed, **self.generator_kwargs)
