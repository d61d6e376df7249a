"""What the CIFAR training augmentation does, measured on many draws, on both training pipelines.

The training images encode where each pixel came from: red = source row + 1, green = source column + 1,
blue = the image's index, and the zero padding reads 0. One pixel near the centre (always inside the
image) then gives the image, its crop offset and whether it was flipped; the whole output is checked
against that crop. With fixed seeds every count below is deterministic, and each bound sits more than
five standard deviations away from what a correct pipeline gives on average, while a pipeline that never
flips, always flips, restricts the offsets or repeats an epoch's draws misses it by far.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.fixtures import cifar_split_dict, write_pickle
from helpers.training import quiet_trainer
from torch import nn

from sdd_lightning.data import Cifar100DataModule
from sdd_lightning.data.transforms import CIFAR100_MEAN, CIFAR100_STD

N = 200  # training images (blue channel = index, so < 256)
SIZE = 32
BATCH = 50
EPOCHS = 10  # 2,000 draws per pipeline
PIPELINES = ["standard", "device-resident"]

pytestmark = pytest.mark.usefixtures("one_thread")


def position_images(n: int) -> torch.Tensor:
    """``uint8 (n, 3, 32, 32)``: red = row + 1, green = column + 1, blue = image index."""
    images = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    images[:, 0] = (torch.arange(SIZE) + 1)[:, None]
    images[:, 1] = (torch.arange(SIZE) + 1)[None, :]
    images[:, 2] = torch.arange(n)[:, None, None]
    return images


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A CIFAR-100 folder in the official format whose training images are ``position_images(N)``."""
    root = tmp_path_factory.mktemp("cifar-positions")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = cifar_split_dict(rng.permutation(np.arange(N) % 100), "train", rng)
    train["data"] = position_images(N).reshape(N, -1).numpy()
    write_pickle(folder / "train", train)
    write_pickle(folder / "test", cifar_split_dict(np.arange(100), "test", rng))
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []})
    return root


def decode(x: torch.Tensor, padding: int) -> dict[str, torch.Tensor]:
    """Index, crop offsets ``(dy, dx)`` in ``[0, 2 * padding]`` and flip of every image of a normalised batch.

    Also checks that each image is exactly that crop of the zero-padded source, flipped or not.
    """
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    pixels = ((x * std + mean) * 255).round().long()
    centre = pixels[:, :, SIZE // 2, SIZE // 2]
    index = centre[:, 2]
    flipped = pixels[:, 1, SIZE // 2, SIZE // 2 - 1] > centre[:, 1]  # columns run backwards in a flipped row
    dy = centre[:, 0] - 1 + padding - SIZE // 2
    dx = centre[:, 1] - 1 + padding - torch.where(flipped, SIZE // 2 - 1, SIZE // 2)
    # the crop at (dy, dx) of the zero-padded source, columns reversed where flipped, gathered in one go
    rows = dy[:, None] + torch.arange(SIZE)
    cols = dx[:, None] + torch.arange(SIZE)
    cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded = F.pad(position_images(N).long(), (padding,) * 4)
    expected = padded[
        index[:, None, None, None], torch.arange(3)[:, None, None], rows[:, None, :, None], cols[:, None, None, :]
    ]
    bad = (pixels != expected).flatten(1).any(1)
    assert not bad.any(), f"{int(bad.sum())} images are not a crop of the padded source or its flip"
    return {"index": index, "dy": dy, "dx": dx, "flipped": flipped}


def _epochs(dm: Cifar100DataModule, pipeline: str, epochs: int) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    loader = dm.train_dataloader()
    for epoch in range(epochs):
        if pipeline == "device-resident":
            loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
        yield list(loader)


def _with_labels(decoded: dict[str, torch.Tensor], y: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch's labels next to the stored labels of the images it decodes to."""
    return decoded | {"label": y, "true_label": labels[decoded["index"]]}


_DRAWS: dict[tuple[str, int, int], list[list[dict[str, torch.Tensor]]]] = {}


def draws(root, pipeline: str, padding: int, epochs: int = EPOCHS) -> list[list[dict[str, torch.Tensor]]]:
    """``epochs`` epochs of decoded training batches (each with its labels); computed once per setting."""
    key = (pipeline, padding, epochs)
    if key not in _DRAWS:
        torch.manual_seed(0)  # the main-process augmentation of the standard pipeline uses the global generator
        dm = Cifar100DataModule(
            root,
            batch_size=BATCH,
            padding=padding,
            seed=0,
            device_resident=pipeline == "device-resident",
            num_workers=2 if pipeline == "standard-workers" else 0,
            persistent_workers=False,  # new workers every epoch: their seeds must still change
        )
        dm.setup("fit")
        assert torch.equal(dm.train_data[0], position_images(N))
        _DRAWS[key] = [
            [_with_labels(decode(x, padding), y, dm.train_data[1]) for x, y in batches]
            for batches in _epochs(dm, pipeline, epochs)
        ]
    return _DRAWS[key]


def _cat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([b[name] for b in batches]) for name in batches[0]}


def _all(epochs: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    return _cat([b for batches in epochs for b in batches])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_flips_about_half_the_time_and_nothing_else_is_random_without_padding(cifar_root, pipeline):
    seen = _all(draws(cifar_root, pipeline, padding=0))
    assert len(seen["flipped"]) == EPOCHS * N
    assert (seen["dy"] == 0).all() and (seen["dx"] == 0).all()  # padding 0: the image itself or its flip
    rate = seen["flipped"].double().mean().item()
    assert 0.44 < rate < 0.56, f"flipped {rate:.3f} of {len(seen['flipped'])} draws, expected about 0.5"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_crops_cover_every_allowed_offset_evenly(cifar_root, pipeline):
    padding = 4
    epochs = draws(cifar_root, pipeline, padding)
    seen = _all(epochs)
    offsets = 2 * padding + 1
    assert seen["dy"].min() >= 0 and seen["dx"].min() >= 0
    assert seen["dy"].max() <= 2 * padding and seen["dx"].max() <= 2 * padding
    pairs = set(zip(seen["dy"].tolist(), seen["dx"].tolist(), strict=True))
    assert len(pairs) == offsets**2, f"only {len(pairs)} of the {offsets**2} (row, column) offsets drawn"
    for axis in ("dy", "dx"):
        share = seen[axis].bincount(minlength=offsets).double() / len(seen[axis])
        assert share.min() > 0.07 and share.max() < 0.16, f"{axis} offsets drawn unevenly: {share.tolist()}"
    assert 0.44 < seen["flipped"].double().mean().item() < 0.56
    # each image of a batch gets its own draw, not one offset and flip for the whole batch
    for batch in epochs[0]:
        assert len(set(zip(batch["dy"].tolist(), batch["dx"].tolist(), strict=True))) >= 10
        assert 5 <= batch["flipped"].sum() <= BATCH - 5


OFFICIAL_VIEWS = json.loads((Path(__file__).resolve().parents[1] / "assets" / "official_step.json").read_text())[
    "augmentation"
]
"""The views the official training transform drew (tools/record_official_step.py): (row offset, column offset,
flip), with offsets in ``[0, 2 * padding]``."""


def _chi_square_limit(dof: int, z: float) -> float:
    """The chi-square value ``z`` standard deviations up (Wilson-Hilferty; within 1% for dof > 30)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_draws_exactly_the_official_views_uniformly(cifar_root, pipeline):
    """The official RandomCrop(32, padding=4) + RandomHorizontalFlip draws 9 x 9 offsets x 2 flips = 162 views,
    each with probability 1/162: both pipelines draw from that set, all of it, evenly (chi-square test)."""
    official = {tuple(view) for view in OFFICIAL_VIEWS["views"]}
    padding = OFFICIAL_VIEWS["padding"]
    assert len(official) == (2 * padding + 1) ** 2 * 2 == 162
    drawn = _params(_all(draws(cifar_root, pipeline, padding))).tolist()
    counts = Counter(map(tuple, drawn))
    assert set(counts) <= official, f"views the official transform never draws: {sorted(set(counts) - official)}"
    assert set(counts) == official, f"official views never drawn: {sorted(official - set(counts))}"
    expected = len(drawn) / len(official)
    statistic = sum((counts[view] - expected) ** 2 / expected for view in official)
    limit = _chi_square_limit(len(official) - 1, z=4.75)  # p about 1e-6 for a uniform draw
    assert statistic < limit, f"{len(drawn)} views drawn unevenly: chi-square {statistic:.0f} >= {limit:.0f}"


def _params(decoded: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(n, 3)``: each image's row offset, column offset and flip."""
    return torch.stack([decoded["dy"], decoded["dx"], decoded["flipped"].long()], 1)


def _repeated(before: torch.Tensor, after: torch.Tensor) -> float:
    """Fraction of rows of two ``_params`` tables that are equal; 1 / 162 for independent draws."""
    return (before == after).all(1).double().mean().item()


def assert_fresh_draws(by_epoch: list[dict[str, torch.Tensor]]) -> None:
    """Every epoch shows every image once with its own label, and does not replay the previous epoch's draws.

    Checked per image (the same image cropped and flipped alike again) and per position in the epoch (the
    random stream restarted, whatever the new order).
    """
    for epoch in by_epoch:
        assert torch.equal(epoch["index"].sort().values, torch.arange(N))  # every image once per epoch
        assert torch.equal(epoch["label"], epoch["true_label"])  # each image keeps its own label
    for epoch in range(1, len(by_epoch)):
        before, after = by_epoch[epoch - 1], by_epoch[epoch]
        per_image = _repeated(_params(before)[before["index"].argsort()], _params(after)[after["index"].argsort()])
        per_position = _repeated(_params(before), _params(after))
        assert per_image < 0.1, f"epoch {epoch} repeats epoch {epoch - 1}'s crop and flip for {per_image:.0%} of images"
        assert per_position < 0.1, f"epoch {epoch} replays epoch {epoch - 1}'s random draws ({per_position:.0%})"


@pytest.mark.parametrize("pipeline", [*PIPELINES, "standard-workers"])
def test_consecutive_epochs_draw_new_augmentations_with_the_same_labels(cifar_root, pipeline):
    epochs = draws(cifar_root, pipeline, padding=4, epochs=EPOCHS if pipeline in PIPELINES else 3)
    # consecutive batches (with workers: from different worker processes) do not replay one random stream
    for batches in epochs:
        for before, after in itertools.pairwise(batches):
            assert _repeated(_params(before), _params(after)) < 0.2
    assert_fresh_draws([_cat(batches) for batches in epochs])


class _Recorder(L.LightningModule):
    """Trains a linear layer and keeps every batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 100))
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.batches.append((self.current_epoch, x.detach().clone(), y.clone()))
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_device_resident_epochs_differ_under_the_lightning_trainer(cifar_root):
    """The epoch the device-resident loader seeds its draws with comes from the fit loop."""
    dm = Cifar100DataModule(cifar_root, batch_size=BATCH, device_resident=True, seed=0)
    model = _Recorder()
    quiet_trainer(None, max_epochs=3, limit_val_batches=0).fit(model, datamodule=dm)
    assert_fresh_draws(
        [
            _cat([_with_labels(decode(x, 4), y, dm.train_data[1]) for e, x, y in model.batches if e == epoch])
            for epoch in range(3)
        ]
    )
