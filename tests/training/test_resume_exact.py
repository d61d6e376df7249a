"""A run stopped in the middle of an epoch and resumed ends with the weights of an unbroken run, bit for bit.

Both training pipelines (the standard ``DataLoader``, with and without worker processes, and the
device-resident loader) save their position in the checkpoint and resume the interrupted epoch where it
stopped, with the same order and the same augmentation of every image.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers.app import TINY, compose_config
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import SequentialSampler

from sdd_lightning.cli.train import train
from sdd_lightning.data import (
    DeviceResidentLoader,
    EpochSampler,
    ResumableDataLoader,
    SeededSamples,
    SyntheticDataModule,
    TensorImageDataset,
)
from sdd_lightning.data.transforms import cifar_train_transform

PIPELINES = {
    "device-resident": ["data.device_resident=true"],
    "standard": ["data.device_resident=false", "data.num_workers=0"],
    "standard-2-workers": ["data.device_resident=false", "data.num_workers=2"],
}


# --- the loaders on their own ------------------------------------------------------------------------------


def test_a_seeded_sample_depends_on_its_epoch_and_index_only():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    samples = SeededSamples(TensorImageDataset(images, torch.arange(4), cifar_train_transform()), seed=7)
    first = samples[(2, 1)][0]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert torch.equal(samples[(2, 1)][0], first)  # whatever the caller's generator held
    assert torch.equal(torch.get_rng_state(), state)  # and left as it was
    draws = {samples[(epoch, 1)][0].numpy().tobytes() for epoch in range(12)}
    assert len(draws) > 6  # another epoch, another crop and flip (81 offsets x 2 flips)
    other_seed = SeededSamples(samples.dataset, seed=8)
    assert any(not torch.equal(other_seed[(e, 1)][0], samples[(e, 1)][0]) for e in range(4))


def _loader(pipeline: str, rank: int = 0, world_size: int = 1):
    dm = SyntheticDataModule(
        num_train=200,
        num_val=16,
        batch_size=16,
        seed=3,
        device_resident=pipeline == "device-resident",
        num_workers=2 if pipeline == "standard-2-workers" else 0,
        persistent_workers=False,
    )
    dm.setup("fit")
    if world_size > 1:  # what a DDP process's trainer tells the data module
        cpu = SimpleNamespace(root_device=torch.device("cpu"))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, strategy=cpu)
    return dm.train_dataloader()


def _epoch(loader, epoch: int, stop: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``epoch`` (the first ``stop`` of them), with the epoch set as Lightning sets it."""
    loader.sampler.set_epoch(epoch)
    batches = []
    for x, y in loader:
        batches.append((x.clone(), y.clone()))
        if stop is not None and len(batches) == stop:
            break
    return batches


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_a_loader_resumed_mid_epoch_yields_the_rest_of_that_epoch(pipeline):
    unbroken = _loader(pipeline)
    _epoch(unbroken, 0)
    epoch1 = _epoch(unbroken, 1)
    assert len(epoch1) == 13

    stopped = _loader(pipeline)
    _epoch(stopped, 1, stop=5)
    state = stopped.state_dict()
    assert state == {"epoch": 1, "batches": 5, "batch_size": 16, "num_replicas": 1}
    resumed = _loader(pipeline)
    resumed.load_state_dict(state)
    _assert_same_batches(_epoch(resumed, 1), epoch1[5:])  # order, labels and every crop and flip
    assert resumed.state_dict()["batches"] == 13
    # the next epoch starts at its beginning; the sampler moved on after the complete pass
    assert resumed.sampler.epoch == 2 and len(_epoch(resumed, 2)) == 13


def test_a_position_saved_at_the_end_of_an_epoch_resumes_at_the_next_one():
    unbroken = _loader("standard")
    _epoch(unbroken, 0)
    resumed = _loader("standard")
    resumed.load_state_dict(unbroken.state_dict())
    assert resumed.sampler.epoch == 1
    _assert_same_batches(_epoch(resumed, 1), _epoch(unbroken, 1))


def test_a_position_for_another_epoch_is_not_applied():
    """Lightning sets the epoch after loading; a position of an epoch that is not the one run is ignored."""
    stopped = _loader("device-resident")
    _epoch(stopped, 0, stop=4)
    resumed = _loader("device-resident")
    resumed.load_state_dict(stopped.state_dict())
    assert len(_epoch(resumed, 1)) == 13


@pytest.mark.parametrize("pipeline", ["device-resident", "standard"])
def test_distributed_shards_resume_mid_epoch_on_every_rank(pipeline):
    for rank in (0, 1):
        unbroken = _loader(pipeline, rank, 2)
        epoch = _epoch(unbroken, 2)
        assert len(epoch) == 7  # 100 of the 200 images per rank
        stopped = _loader(pipeline, rank, 2)
        _epoch(stopped, 2, stop=3)
        resumed = _loader(pipeline, rank, 2)
        resumed.load_state_dict(stopped.state_dict())
        _assert_same_batches(_epoch(resumed, 2), epoch[3:])


def test_a_position_saved_with_another_batch_size_restarts_the_epoch_with_a_warning():
    stopped = _loader("standard")
    _epoch(stopped, 0, stop=4)
    images, labels = torch.zeros(200, 3, 32, 32, dtype=torch.uint8), torch.zeros(200, dtype=torch.long)
    other = DeviceResidentLoader(images, labels, 8, mean=(0,) * 3, std=(1,) * 3, shuffle=True)
    with pytest.warns(UserWarning, match="batch_size=16 on 1 process"):
        other.load_state_dict(stopped.state_dict())
    assert len(_epoch(other, 0)) == 25


def test_the_sequential_sampler_of_lightnings_overfit_mode_keeps_the_stored_order():
    dm = SyntheticDataModule(num_train=40, num_val=8, batch_size=8, device_resident=False)
    dm.setup("fit")
    loader = ResumableDataLoader(SeededSamples(dm.train_set, 0), sampler=SequentialSampler(dm.train_set), batch_size=8)
    assert isinstance(loader.sampler, EpochSampler) and not loader.sampler.shuffle
    assert torch.equal(torch.cat([y for _, y in loader]), dm.train_data[1])


# --- a run stopped by SIGTERM and resumed ----------------------------------------------------------------


class StopAt(L.Callback):
    """Sends this process SIGTERM after training step ``step``, as a scheduler's time limit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "Lightning handles SIGTERM"
            signal.raise_signal(signal.SIGTERM)


def _run(overrides: list[str], run_dir: Path, ckpt: Path | None = None) -> dict:
    resume = [f"ckpt_path={ckpt}"] if ckpt is not None else []
    train(compose_config([*overrides, *resume], run_dir))
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    optimizer_a, optimizer_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert optimizer_a.keys() == optimizer_b.keys() and optimizer_a  # SGD momentum buffers
    for index, state in optimizer_a.items():
        for name in state:
            assert torch.equal(state[name], optimizer_b[index][name]), (index, name)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_a_run_stopped_mid_epoch_and_resumed_ends_bit_for_bit_like_an_unbroken_one(tmp_path, pipeline):
    # 320 images / 64 = 5 steps per epoch; the stop after step 7 is after batch 2 of epoch 1
    common = [*TINY, *PIPELINES[pipeline], "deterministic=true", "seed=5", "data.num_train=320", "epochs=2"]
    unbroken = _run(common, tmp_path / "unbroken")
    stop = ["+callbacks.stop._target_=test_resume_exact.StopAt", "+callbacks.stop.step=7"]
    with pytest.raises(SIGTERMException):
        _run([*common, *stop], tmp_path / "stopped")
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    interrupted = torch.load(last, weights_only=True)  # still a weights-only checkpoint
    assert interrupted["global_step"] == 7
    position = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position == [{"epoch": 1, "batches": 2, "batch_size": 64, "num_replicas": 1}]
    resumed = _run(common, tmp_path / "resumed", ckpt=last)
    assert resumed["global_step"] == unbroken["global_step"] == 10
    _assert_same_training_state(resumed, unbroken)


def test_without_the_saved_position_the_resumed_run_differs(tmp_path):
    """The check above can fail: dropping the position from the checkpoint restarts the epoch in a new order."""
    common = [*TINY, *PIPELINES["standard"], "deterministic=true", "seed=5", "data.num_train=320", "epochs=2"]
    unbroken = _run(common, tmp_path / "unbroken")
    stop = ["+callbacks.stop._target_=test_resume_exact.StopAt", "+callbacks.stop.step=7"]
    with pytest.raises(SIGTERMException):
        _run([*common, *stop], tmp_path / "stopped")
    checkpoint = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    del checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    torch.save(checkpoint, tmp_path / "no-position.ckpt")
    resumed = _run(common, tmp_path / "resumed", ckpt=tmp_path / "no-position.ckpt")
    assert resumed["global_step"] == unbroken["global_step"]
    assert not all(torch.equal(resumed["state_dict"][k], unbroken["state_dict"][k]) for k in unbroken["state_dict"])
