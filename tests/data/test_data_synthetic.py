"""SyntheticDataModule (the built-in shapes set): sizes, determinism, both pipelines, difficulty."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from sdd_lightning.data import DeviceResidentLoader, SyntheticDataModule, generate_shapes
from sdd_lightning.data.synthetic import SHAPE_KINDS


def make(**kwargs) -> SyntheticDataModule:
    kwargs = {"num_train": 400, "num_val": 160, "batch_size": 32} | kwargs
    dm = SyntheticDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_sizes_labels_and_balance():
    dm = make(num_classes=10)
    images, labels = dm.train_data
    assert images.shape == (400, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and torch.equal(labels.bincount(), torch.full((10,), 40))
    assert dm.val_data[0].shape == (160, 3, 32, 32) and dm.val_data[1].max() < 10
    assert dm.num_classes == 10 and dm.class_names == list(SHAPE_KINDS)[:10]


@pytest.mark.parametrize("device_resident", [True, False])
def test_batches(device_resident):
    dm = make(device_resident=device_resident, eval_batch_size=80)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train, DeviceResidentLoader if device_resident else DataLoader)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(val))
    assert xv.shape == (80, 3, 32, 32) and torch.equal(yv, dm.val_data[1][:80])
    assert abs(xv.mean().item()) < 0.3 and 0.7 < xv.std().item() < 1.3  # roughly standardised


def test_same_seed_same_data_other_seed_other_data():
    a, b = make(data_seed=3), make(data_seed=3, seed=9)  # the training seed does not change the data
    c = make(data_seed=4)
    assert torch.equal(a.train_data[0], b.train_data[0]) and torch.equal(a.val_data[1], b.val_data[1])
    assert not torch.equal(a.train_data[0], c.train_data[0])
    assert not torch.equal(a.train_data[0][:160], a.val_data[0])  # train and val are different draws


def test_generate_shapes_is_deterministic():
    x1, y1 = generate_shapes(300, seed=1)
    x2, y2 = generate_shapes(300, seed=1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(generate_shapes(300, seed=2)[0], x1)


def test_difficulty_knobs_change_the_images():
    base = generate_shapes(64, seed=0)[0].float()
    noisy = generate_shapes(64, seed=0, noise_std=0.2)[0].float()
    assert (noisy - base).abs().mean() > 5


def test_label_is_the_red_object_kind():
    # With a single object (the target) on a flat background, the red object's pixels carry the label.
    images, labels = generate_shapes(32, seed=0, min_objects=1, max_objects=1, background_contrast=0, noise_std=0)
    x = images.float()
    red = (x[:, 0] > x[:, 1] + 60) & (x[:, 0] > x[:, 2] + 60)
    assert (red.flatten(1).sum(1) > 10).all()  # every image shows a clearly red object
    assert labels.unique().numel() > 8


def test_invalid_knobs_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDataModule(num_classes=17)
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticDataModule(max_objects=5)
    with pytest.raises(ValueError, match="object_size"):
        SyntheticDataModule(object_size=(12, 8))


def test_a_linear_classifier_is_far_from_solving_it():
    dm = make(num_train=800, num_val=400)
    x, y = dm.train_data
    xv, yv = dm.val_data
    mean, std = x.float().mean(), x.float().std()
    features, val_features = (x.float().flatten(1) - mean) / std, (xv.float().flatten(1) - mean) / std
    model = nn.Linear(features.shape[1], dm.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(40):  # full-batch steps: enough for a linear model to fit the training images
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(features), y).backward()
        optimizer.step()
    with torch.no_grad():
        train_accuracy = (model(features).argmax(1) == y).float().mean().item()
        accuracy = (model(val_features).argmax(1) == yv).float().mean().item()
    assert train_accuracy > 0.5  # it fits the training set ...
    assert accuracy < 0.3  # ... but does not generalise: chance is 1/16, the label is one object among several
