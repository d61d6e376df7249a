"""The rules the oracle of the training step shares between its two sides.

``tools/record_official_step.py`` runs these rules against the official SDD code and commits what it saw to
``tests/assets/official_step.json``; ``tests/training/test_oracle.py`` runs them against this project's
``DistillationModule`` and compares. Both sides import this one file, so the weights, batches, labels and
checksums are the same code.

Every value comes from a counter-based generator (NumPy's PCG64, seeded by a SHA-256 of a text key), not from
torch's global generator: nothing depends on the order in which networks or tensors are built, and the streams
do not change with the torch version.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

RULE_VERSION = 1
"""Bumped whenever a rule below changes; the recorded file names the version it was made with."""

BATCH_SIZE = 2
IMAGE_SIZE = 32
NUM_CLASSES = 100
STEPS = 5
EPOCH = 10
"""The official trainer's epoch (counted from 1) the steps run in: halfway through a 20-epoch warm-up, so the
warm-up factor (0.5) is neither 1 nor negligible, and LR 0.05 (before the first decay at 150)."""
DTYPE = torch.float64
CLASSIFIER_GAIN = 8.0
"""Linear (classifier) weights are this many times He-scale: confident teachers, as trained ones are."""
CELLS = (1, 2, 3, 4)
"""The regions of the 2x2 grid (regions run 1x1 first, then 2x2 row-major): the labels rule picks one of them."""


def uniform(key: str, count: int) -> np.ndarray:
    """``count`` doubles in ``[0, 1)``, a pure function of ``key``."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.Generator(np.random.PCG64(seed)).random(count)


def _centred(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero mean, unit variance (uniform on ``[-sqrt 3, sqrt 3)``), ``shape``, float64."""
    values = (2.0 * uniform(key, math.prod(shape)) - 1.0) * math.sqrt(3.0)
    return torch.from_numpy(values).reshape(shape)


def initial_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The value of the parameter or buffer called ``name`` (e.g. ``student.layer1.0.bn1.running_var``).

    Depends only on the name and the shape; the kind of tensor is read off the name's last part and the
    number of dimensions:

    - convolution and linear weights: He-style scale ``gain / sqrt(fan_in)`` (gain sqrt 2 for convolutions);
    - BatchNorm weights in ``[0.25, 0.75)`` and biases within +-0.1: activations stay O(1) through 32 layers;
    - running means within +-0.1 and running variances in ``[0.5, 1.5)``: the teacher's eval-mode BatchNorm
      works on statistics of the right order;
    - ``num_batches_tracked`` 0.
    """
    key = f"v{RULE_VERSION}|{name}|{'x'.join(map(str, shape))}"
    last = name.rsplit(".", 1)[-1]
    if last == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    u = torch.from_numpy(uniform(key, math.prod(shape))).reshape(shape)
    if last == "running_mean":
        return 0.1 * (2.0 * u - 1.0)
    if last == "running_var":
        return 0.5 + u
    if last == "bias":
        return 0.1 * (2.0 * u - 1.0)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        gain = math.sqrt(2.0) if len(shape) > 2 else CLASSIFIER_GAIN
        weight = (2.0 * u - 1.0) * math.sqrt(3.0) * gain / math.sqrt(fan_in)
        if len(shape) == 2:  # rows of zero sum: what all features share (after ReLU, much) favours no class
            weight = weight - weight.mean(1, keepdim=True)
        return weight
    return 0.25 + 0.5 * u  # a 1-d weight: BatchNorm's scale


def set_weights(network: nn.Module, role: str) -> None:
    """Sets every parameter and buffer of ``network`` by :func:`initial_value` of ``f"{role}.{its name}"``."""
    with torch.no_grad():
        for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
            value = initial_value(f"{role}.{name}", tuple(tensor.shape))
            tensor.copy_(value.to(tensor.dtype))


def state_dict_for(network: nn.Module, role: str) -> dict[str, torch.Tensor]:
    """The state_dict :func:`set_weights` gives ``network``, in float64, without changing ``network``."""
    return {
        name: initial_value(f"{role}.{name}", tuple(tensor.shape)).to(
            DTYPE if tensor.is_floating_point() else tensor.dtype
        )
        for name, tensor in network.state_dict().items()
    }


def images(step: int) -> torch.Tensor:
    """The images of step ``step`` (from 0): ``(BATCH_SIZE, 3, 32, 32)``, float64, about zero mean, unit variance.

    Each image channel is a sum of a few plane waves of low frequency with their own amplitudes, directions and
    phases, plus a little noise: images differ in what global pooling keeps, and regions of one image differ.
    """
    waves, shape = 4, (BATCH_SIZE, 3, 1, 1)
    key = f"v{RULE_VERSION}|images|{step}"
    grid = torch.arange(IMAGE_SIZE, dtype=DTYPE) / IMAGE_SIZE
    rows, cols = grid[:, None], grid[None, :]
    x = 0.3 * _centred(f"{key}|noise", (BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE))
    for wave in range(waves):
        amplitude = _centred(f"{key}|amplitude{wave}", shape)
        fy, fx = (
            torch.from_numpy(uniform(f"{key}|{axis}{wave}", BATCH_SIZE * 3)).reshape(shape) * 6 - 3 for axis in "yx"
        )
        phase = torch.from_numpy(uniform(f"{key}|phase{wave}", BATCH_SIZE * 3)).reshape(shape) * 2 * math.pi
        x = x + amplitude * torch.cos(2 * math.pi * (fy * rows + fx * cols) + phase) * math.sqrt(2.0 / waves)
    return x


def labels(step: int, teacher_global: torch.Tensor, teacher_local: torch.Tensor) -> torch.Tensor:
    """The labels of step ``step``, from the teacher's predictions on :func:`images` of that step.

    Image 0 takes the teacher's global prediction (global right, some regions wrong). Image 1 takes the prediction
    of the first 2x2 cell that disagrees with its global one (that region right, the global one wrong), or of
    the last cell when all agree. The others take a seeded class. So every step has regions of all four
    kinds the official weights tell apart. ``teacher_global`` is ``(B, K)``; ``teacher_local`` is ``(B, R, K)``
    with the 1x1 and 2x2 regions first.
    """
    drawn = uniform(f"v{RULE_VERSION}|labels|{step}", BATCH_SIZE)
    y = torch.from_numpy(np.floor(drawn * NUM_CLASSES).astype(np.int64))
    y[0] = teacher_global[0].argmax()
    cells = [int(teacher_local[1, cell].argmax()) for cell in CELLS]
    y[1] = next((c for c in cells if c != int(teacher_global[1].argmax())), cells[-1])
    return y


@functools.lru_cache(maxsize=512)
def _projection(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    return _centred(f"v{RULE_VERSION}|projection|{name}", shape)


def checksums(
    parameters: Iterable[tuple[str, torch.Tensor]],
    buffers: Iterable[tuple[str, torch.Tensor]],
    initial: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    """Figures of the student's state after a step, sensitive to the update itself (not only to the weights).

    ``initial`` maps the names of the student's parameters and buffers to their values before the first step.

    - ``param_sq``: the sum of squares of all parameters;
    - ``delta_sq``: the sum of squares of the parameters' change since the start;
    - ``delta_proj``: the change projected on a fixed pseudo-random direction per parameter (its typical size is
      ``sqrt(delta_sq)``, the scale to compare it at);
    - ``running_delta_sq``: the sum of squares of the change of the floating-point buffers (BatchNorm's
      running statistics).
    """
    figures = {"param_sq": 0.0, "delta_sq": 0.0, "delta_proj": 0.0, "running_delta_sq": 0.0}
    with torch.no_grad():
        for name, value in parameters:
            value = value.detach().to(DTYPE)
            delta = value - initial[name].to(DTYPE)
            figures["param_sq"] += float((value * value).sum())
            figures["delta_sq"] += float((delta * delta).sum())
            figures["delta_proj"] += float((delta * _projection(name, tuple(value.shape))).sum())
        for name, value in buffers:
            if value.is_floating_point():
                delta = value.detach().to(DTYPE) - initial[name].to(DTYPE)
                figures["running_delta_sq"] += float((delta * delta).sum())
    return figures


def snapshot(network: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of ``network``'s parameters and buffers, by name (the ``initial`` of :func:`checksums`)."""
    return {name: t.detach().clone() for name, t in [*network.named_parameters(), *network.named_buffers()]}


def student_checksums(network: nn.Module, initial: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """:func:`checksums` of a student network."""
    return checksums(network.named_parameters(), network.named_buffers(), initial)


def relative_error(ours: float, official: float, scale: float = 0.0) -> float:
    """``|ours - official|`` relative to the larger of the two and ``scale``."""
    denominator = max(abs(ours), abs(official), scale)
    return abs(ours - official) / denominator if denominator > 0 else 0.0
