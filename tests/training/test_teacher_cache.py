"""The teacher view cache: exact (a run with it logs what a run without it logs), safe to share, and refused
where it cannot be exact.

The runs use a CIFAR-100 folder in the official pickle format (100 training images), two small networks and
two epochs of four batches; the sharing tests use a bare cache of tiny arrays in forked processes.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import time
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.fixtures import write_cifar100
from helpers.training import SmallNet, quiet_trainer
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torchvision.transforms import v2

from sdd_lightning.builders import configure_teacher_cache
from sdd_lightning.data import Cifar100DataModule, ImageNetDataModule
from sdd_lightning.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from sdd_lightning.data.views import ViewedImageDataset
from sdd_lightning.errors import ConfigError, TeacherCacheError
from sdd_lightning.training.module import DistillationModule
from sdd_lightning.training.teacher_cache import TeacherViewCache, cache_bytes, state_dict_hash

pytestmark = pytest.mark.usefixtures("one_thread")

PIPELINES = ["standard", "device-resident"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, train_per_class=1, test_per_class=1)
    return root


def datamodule(root, pipeline: str, with_views: bool, **kwargs) -> Cifar100DataModule:
    options = {"batch_size": 32, "seed": 3} | kwargs
    return Cifar100DataModule(root, device_resident=pipeline == "device-resident", with_views=with_views, **options)


# -- the views a batch carries --------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_batches_carry_the_views_they_drew_and_the_same_images(cifar_root, pipeline):
    plain = datamodule(cifar_root, pipeline, False, val_split=20)
    viewed = datamodule(cifar_root, pipeline, True, val_split=20)
    for dm in (plain, viewed):
        dm.setup("fit")
    full = viewed._load_split(True)[0]  # the whole training split, held-out images included
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    for epoch in range(2):
        loaders = [dm.train_dataloader() for dm in (plain, viewed)]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for (x0, y0), (x, y, views) in zip(*loaders, strict=True):
            assert torch.equal(x0, x) and torch.equal(y0, y)
            index, dy, dx, flip = views.unbind(1)
            padded = F.pad(full[index].float(), (4, 4, 4, 4))
            for i in range(len(x)):
                crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
                crop = crop.flip(2) if flip[i] else crop
                torch.testing.assert_close(x[i], (crop / 255 - mean) / std, rtol=0, atol=1e-5)
    assert len(viewed.train_data[0]) == 80 and viewed.view_set().num_images == 100
    assert viewed.view_set().views_per_image == 162


def test_a_transform_outside_the_view_set_is_refused():
    images, labels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2)
    rotate = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomRotation(30)])
    dataset = ViewedImageDataset(images, labels, torch.arange(2), rotate, padding=4)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="outside the finite crop-and-flip set"):
        dataset[0]


# -- exactness: the same run with and without the cache ------------------------------------------------------


def _fit(root, tmp_path, pipeline: str, cache_dir=None, dtype: str = "float32") -> tuple[list[dict], dict, Any]:
    torch.manual_seed(0)
    teacher, student = SmallNet(100, width=8), SmallNet(100, width=4)
    teacher.eval()
    module = DistillationModule(
        student, teacher, 100, scales=(1, 2, 4), teacher_cache_dir=cache_dir, teacher_cache_dtype=dtype
    )
    logger = CSVLogger(tmp_path, name="log", version="")
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1, limit_val_batches=1)
    trainer.fit(module, datamodule=datamodule(root, pipeline, cache_dir is not None))
    with open(tmp_path / "log" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, {k: v.clone() for k, v in module.student.state_dict().items()}, module


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if v and "teacher_cache" not in k} for row in rows]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_run_with_the_cache_cold_then_warm_logs_what_a_run_without_it_logs(cifar_root, tmp_path, pipeline):
    plain_rows, plain_weights, _ = _fit(cifar_root, tmp_path / "plain", pipeline)
    cache = tmp_path / "cache"
    cold_rows, cold_weights, _ = _fit(cifar_root, tmp_path / "cold", pipeline, cache)
    warm_rows, warm_weights, module = _fit(cifar_root, tmp_path / "warm", pipeline, cache)
    # on the CPU the stored logits are bitwise those of the live path: the logged numbers are equal
    assert _numbers(cold_rows) == _numbers(plain_rows) == _numbers(warm_rows)
    for name, value in plain_weights.items():
        assert torch.equal(cold_weights[name], value) and torch.equal(warm_weights[name], value), name
    hits = [float(row["train/teacher_cache_hit_rate"]) for row in warm_rows if row.get("train/teacher_cache_hit_rate")]
    assert hits == [1.0, 1.0]  # the second run draws the same views: it never runs the teacher
    cold_hits = [
        float(row["train/teacher_cache_hit_rate"]) for row in cold_rows if row.get("train/teacher_cache_hit_rate")
    ]
    assert cold_hits[0] == 0.0 and 0.0 <= cold_hits[1] < 0.1  # epoch 2 repeats about 1/162 of epoch 1's views
    # other seeds draw other views of the same images: what the cache returns is what the teacher computes
    other = datamodule(cifar_root, pipeline, True, seed=4, batch_size=100)
    other.setup("fit")
    loader, hits = other.train_dataloader(), 0
    for epoch in range(6):
        loader.sampler.set_epoch(epoch)
        for x, _, views in loader:
            hits += module._teacher_cache.lookup(module._view_set.flat_ids(views).numpy())[0].sum()
            assert torch.equal(module.cached_teacher_local(x, views), module.teacher_logits(x)[1])
    assert hits > 0


def test_float16_entries_round_the_targets_alike_in_cold_and_warm_runs(cifar_root, tmp_path):
    cache = tmp_path / "cache"
    cold_rows, cold_weights, _ = _fit(cifar_root, tmp_path / "cold", "device-resident", cache, "float16")
    warm_rows, warm_weights, _ = _fit(cifar_root, tmp_path / "warm", "device-resident", cache, "float16")
    assert _numbers(cold_rows) == _numbers(warm_rows)
    assert all(torch.equal(cold_weights[k], v) for k, v in warm_weights.items())
    (folder,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert (folder / "logits.bin").stat().st_size == 100 * 162 * 21 * 100 * 2


# -- sharing: concurrent writers, killed writers, changed teachers --------------------------------------------

ENTRIES, REGIONS, CLASSES = 2000, 3, 5
KEY = {"teacher": "ab" * 32, "scales": [1], "pooling": "exact", "data": "d", "compute": {}}


def _cache(root, key=KEY) -> TeacherViewCache:
    return TeacherViewCache(root, key, entries=ENTRIES, regions=REGIONS, num_classes=CLASSES, dtype="float32")


def _values(ids: np.ndarray) -> np.ndarray:
    """What entry ``i`` holds: a function of ``i`` alone, as a teacher's logits are of the view alone."""
    return (ids[:, None, None] * 1.0 + np.arange(REGIONS * CLASSES).reshape(1, REGIONS, CLASSES) / 100).astype(
        np.float32
    )


def _fill(root, seed: int, batches: int) -> None:
    cache = _cache(root)
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        ids = np.unique(rng.integers(0, ENTRIES, 64))
        found, _ = cache.lookup(ids)
        missing = ids[~found]
        cache.store(missing, _values(missing))


def _check_valid_entries_are_right(root) -> int:
    cache = _cache(root)
    ids = np.arange(ENTRIES)
    found, stored = cache.lookup(ids)
    np.testing.assert_array_equal(stored, _values(ids[found]))
    return int(found.sum())


def test_two_processes_filling_one_cache_leave_only_right_entries(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_fill, args=(tmp_path, seed, 60)) for seed in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len([p for p in tmp_path.iterdir()]) == 1  # one folder, created by whichever process came first
    assert _check_valid_entries_are_right(tmp_path) > ENTRIES // 2


def _write_then_die(root) -> None:
    cache = _cache(root)
    ids = np.arange(100, 164)
    cache.logits.flush = lambda: os.kill(os.getpid(), signal.SIGKILL)  # dies between the logits and the marks
    cache.store(ids, _values(ids) + 1)  # wrong values: a mark would make them visible


def test_a_killed_writer_leaves_no_wrong_entry_marked_valid(tmp_path):
    context = multiprocessing.get_context("fork")
    dying = context.Process(target=_write_then_die, args=(tmp_path,))
    dying.start()
    dying.join(60)
    assert dying.exitcode == -signal.SIGKILL
    assert _check_valid_entries_are_right(tmp_path) == 0
    # killed at an arbitrary moment of a long fill: whatever is marked is right
    writer = context.Process(target=_fill, args=(tmp_path, 3, 10_000))
    writer.start()
    time.sleep(0.5)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(60)
    assert _check_valid_entries_are_right(tmp_path) > 0


def test_a_changed_teacher_never_reads_the_old_entries(tmp_path):
    torch.manual_seed(0)
    teacher = SmallNet(10)
    before = state_dict_hash(teacher)
    old = _cache(tmp_path, KEY | {"teacher": before})
    old.store(np.arange(10), _values(np.arange(10)))
    with torch.no_grad():
        teacher.classifier.bias[0] += 1e-6
    after = state_dict_hash(teacher)
    assert after != before
    new = _cache(tmp_path, KEY | {"teacher": after})
    assert new.folder != old.folder and not new.lookup(np.arange(10))[0].any()
    assert old.size()["entries"] == 10 and new.size()["entries"] == 0
    # a folder whose meta disagrees with its name is refused, not read
    (old.folder / "meta.json").write_text((new.folder / "meta.json").read_text())
    with pytest.raises(TeacherCacheError, match="delete that folder"):
        _cache(tmp_path, KEY | {"teacher": before})


def test_cache_size_arithmetic():
    assert cache_bytes(50_000, 162, (1, 2, 4), 100) == 50_000 * 162 * (21 * 100 * 4 + 1)  # ~68 GB
    assert round(cache_bytes(50_000, 162, (1, 2), 100, "float16") / 1e9, 1) == 8.1


# -- refusals -------------------------------------------------------------------------------------------------


def _cfg(tmp_path, distill_target="sdd_lightning.training.module.DistillationModule", **teacher):
    return OmegaConf.create(
        {
            "method": "sd_kd",
            "distill": {"_target_": distill_target},
            "teacher": {"cache_dir": str(tmp_path / "cache"), "cache_dtype": "float32"} | teacher,
        }
    )


class _RotatingCifar(Cifar100DataModule):
    def train_transform(self, size):
        return v2.Compose([super().train_transform(size), v2.RandomRotation(10)])


def test_uses_that_cannot_be_exact_are_refused(tmp_path, cifar_root):
    with pytest.raises(ConfigError, match="random-resized crops"):
        configure_teacher_cache(_cfg(tmp_path), ImageNetDataModule(tmp_path))
    with pytest.raises(ConfigError, match="replaces the training transform"):
        configure_teacher_cache(_cfg(tmp_path), _RotatingCifar(cifar_root))
    with pytest.raises(ConfigError, match="no teacher to cache"):
        configure_teacher_cache(
            _cfg(tmp_path, "sdd_lightning.training.module.ClassificationModule"), Cifar100DataModule(cifar_root)
        )
    with pytest.raises(ConfigError, match="cache_dtype"):
        configure_teacher_cache(_cfg(tmp_path, cache_dtype="bfloat16"), Cifar100DataModule(cifar_root))
    dm = Cifar100DataModule(cifar_root)
    configure_teacher_cache(_cfg(tmp_path), dm)
    assert dm.with_views
