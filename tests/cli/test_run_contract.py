"""The contract of an sdd-train run: exit codes, sweeps that survive a bad job, one run per folder, clean
failures (full disk, changed networks, scales too fine, a diverged loss, no GPU, Ctrl+C) and results.json."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from helpers.app import TINY, compose_config, read_results, subprocess_env
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sdd_lightning.builders import build_datamodule, build_module, check_scales_fit
from sdd_lightning.cli import train as train_module
from sdd_lightning.cli.messages import describe_error
from sdd_lightning.cli.train import train
from sdd_lightning.errors import ConfigError, TrainingDiverged
from sdd_lightning.training import run_lock
from sdd_lightning.training.checkpointing import describe_load_failure


def sdd_train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.train", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )


# -- the process ---------------------------------------------------------------------------------------


def test_a_sweep_goes_on_after_a_failed_and_a_diverged_job_and_exits_non_zero(tmp_path):
    # job 0: a learning rate SGD refuses; job 1: one that makes the loss NaN at once; job 2: a good one
    result = sdd_train(["-m", *TINY, "epochs=1", "optimizer.lr=-1,1e30,0.05", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 1, result.stderr[-3000:]
    failed, diverged, finished = (read_results(tmp_path / str(job)) for job in range(3))

    assert failed["status"] == "failed" and "optimizer.lr=-1" in failed["overrides"]
    assert failed["error"].startswith("configuration error: optimizer.lr=-1")
    assert diverged["status"] == "diverged" and "optimizer.lr=1e+30" in diverged["overrides"]
    assert "global step 1 (epoch 0)" in diverged["error"] and "optimizer.lr=1e+29" in diverged["error"]
    assert all(len(r["error"].splitlines()) <= 2 for r in (failed, diverged))
    assert finished["status"] == "finished" and finished["attempts"] == 1 and "error" not in finished

    lines = result.stderr.splitlines()
    assert f"sdd-train: job {tmp_path / '0'}: configuration error: optimizer.lr=-1" in "\n".join(lines)
    assert any(line.startswith(f"sdd-train: job {tmp_path / '1'}: training diverged:") for line in lines)
    assert lines[-1] == "sdd-train: 2 of 3 jobs failed (each one's results.json says why)"
    assert "Traceback" not in result.stderr
    # every job says at its start what it trains, for how long and where
    start = "sdd-train: tiny_cnn, no teacher, 1 epoch on the synthetic shapes set; writing to "
    assert all(f"{start}{tmp_path / str(job)}" in lines for job in range(3)), result.stderr[-3000:]


def test_cli_returns_the_exit_code(monkeypatch, capsys):
    monkeypatch.setenv("SDD_DEBUG", "0")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", ["sdd-train", "distill=sdkd"])
    assert train_module.cli() == 2
    assert "sd_kd" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["sdd-train", "--cfg", "job", "epochs=3"])
    assert train_module.cli() == 0
    assert "epochs: 3" in capsys.readouterr().out


# -- one run per folder --------------------------------------------------------------------------------


def test_a_folder_in_use_is_refused_and_a_dead_process_lock_is_taken_over(tmp_path, caplog):
    holder = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.lockf(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(holder, json.dumps({"pid": 4242, "host": "node7", "started": "2026-01-01T00:00:00"}).encode())
        result = sdd_train([*TINY, "epochs=1", f"hydra.run.dir={tmp_path}"])
    finally:
        os.close(holder)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"sdd-train: the run folder {tmp_path} is in use by process 4242 on node7")
    assert f"rerun with hydra.run.dir={tmp_path}" in lines[0] and "hydra.run.dir=<another folder>" in lines[0]
    assert not (tmp_path / "results.json").exists()  # the folder is the other run's

    # the lock of a process that died (no flock held any more) is taken over, with a note in the log
    (tmp_path / ".lock").write_text(json.dumps({"pid": 4242, "host": "node7", "started": "2026-01-01T00:00:00"}))
    with caplog.at_level(logging.INFO, logger="sdd_lightning"):
        train(compose_config([*TINY, "epochs=1"], tmp_path))
    assert "taking over the lock of process 4242 on node7" in caplog.text
    assert (tmp_path / ".lock").read_text() == ""  # released


def test_only_the_first_process_of_a_run_takes_the_lock(tmp_path, monkeypatch):
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.setenv(variable, "0")
    with run_lock.hold_run_folder(tmp_path / "rank0"):
        assert (tmp_path / "rank0" / ".lock").read_text().startswith(f'{{"pid": {os.getpid()},')
    for variable in ("LOCAL_RANK", "NODE_RANK"):  # a DDP rank Lightning started into the same folder
        monkeypatch.setenv(variable, "1")
        assert not run_lock.launched_as_rank_zero()
        with run_lock.hold_run_folder(tmp_path / variable):
            assert not (tmp_path / variable / ".lock").exists()
        monkeypatch.setenv(variable, "0")


# -- failures inside a run -----------------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one_and_says_what_to_do(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        last = ".last.ckpt." in os.readlink(f"/proc/self/fd/{file.fileno()}")  # the temporary of last.ckpt
        if last and "last" in saves:  # the second last.ckpt: the disk is full
            file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saves.append("last" if last else "other")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError) as raised:
        train(compose_config([*TINY, "epochs=2"], tmp_path))
    monkeypatch.setattr(torch, "save", real_save)

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the first epoch's, whole
    assert not list(last.parent.glob(".*.tmp"))
    message, code = describe_error(raised.value)
    assert code == 2 and message.startswith(f"sdd-train: cannot use {last}: No space left on device; free space")
    assert "rerun with the same hydra.run.dir to resume" in message and len(message.splitlines()) == 1
    results = read_results(tmp_path)
    assert results["status"] == "failed" and "No space left on device" in results["error"]


def test_resuming_with_other_networks_names_the_difference_and_attempts_add_up(tmp_path):
    first = train(compose_config([*TINY, "epochs=1"], tmp_path))
    assert first["attempts"] == 1
    with pytest.raises(ConfigError, match=r"student\.arch: checkpoint tiny_cnn, this run small_cnn.*hydra\.run\.dir="):
        train(compose_config([*TINY, "epochs=2", "student.arch=small_cnn"], tmp_path))
    assert read_results(tmp_path)["status"] == "failed"

    # a checkpoint without the record of its networks: the first weights whose shapes differ are named
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    stripped = tmp_path / "older.ckpt"
    del checkpoint["callbacks"]["RunRecord"]
    torch.save(checkpoint, stripped)
    with pytest.raises(ConfigError, match=r"cannot resume .*older\.ckpt.*: checkpoint \[\d+, 3, 3, 3\], this run"):
        train(compose_config([*TINY, "epochs=2", "student.arch=small_cnn", f"ckpt_path={stripped}"], tmp_path / "b"))

    resumed = train(compose_config([*TINY, "epochs=2"], tmp_path))
    assert resumed["attempts"] == 2 and resumed["global_step"] == 8
    assert resumed["wall_time_s"] > first["wall_time_s"]


def test_a_load_state_dict_error_is_summarised():
    error = RuntimeError(
        "Error(s) in loading state_dict for ClassificationModule:\n\tsize mismatch for model.fc.weight: copying a "
        "param with shape torch.Size([10, 64]) from checkpoint, the shape in current model is torch.Size([10, 32])."
    )
    refusal = describe_load_failure("run/last.ckpt", error)
    assert "size mismatch for model.fc.weight" in str(refusal) and "hydra.run.dir=" in str(refusal)
    assert describe_load_failure("run/last.ckpt", RuntimeError("CUDA error")) is None


def test_a_scale_finer_than_the_feature_map_is_refused_before_training(tmp_path):
    pair = ["distill=sd_kd", "teacher.arch=tiny_cnn", "teacher.allow_random=true"]
    message = r"distill\.scales=\[1, 16\]: scale 16 .* 32x32 images .*8x8.*largest usable side is 8"
    with pytest.raises(ConfigError, match=message):
        train(compose_config([*TINY, *pair, "distill.scales=[1,16]", "epochs=1"], tmp_path))
    assert not (tmp_path / "checkpoints").exists()

    # the probe leaves modes, BatchNorm statistics and the random generators as they were
    cfg = compose_config([*TINY, *pair, "distill.scales=[1,2,8]"], tmp_path)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes).train()
    buffers = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    check_scales_fit(module, datamodule)
    assert module.training and not module.teacher.training
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in buffers.items())
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_gpu_names_the_cpu_trainers(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as raised:
        train(compose_config([*TINY, f"trainer={trainer}", "epochs=1"], tmp_path))
    message, code = describe_error(raised.value)
    assert message.startswith(f"sdd-train: configuration error: trainer={trainer} needs a CUDA GPU")
    assert "trainer=cpu" in message and "trainer=ddp_sim" in message and code == 2


def test_a_diverged_loss_is_a_short_error():
    message, code = describe_error(TrainingDiverged("the training loss is nan at global step 3 (epoch 0): ..."))
    assert message.startswith("sdd-train: training diverged: the training loss is nan at global step 3")
    assert code != 0


def test_ctrl_c_stops_cleanly_and_is_named_as_sigint(tmp_path, caplog):
    ctrl_c = ["+callbacks.ctrl_c._target_=helpers.faults.SignalAtStep", "+callbacks.ctrl_c.step=2"]
    signal_log = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
    signal_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(SIGTERMException) as stopped:
            train(compose_config([*TINY, "epochs=3", *ctrl_c], tmp_path))
    finally:
        signal_log.removeHandler(caplog.handler)
    assert str(stopped.value).startswith("sdd-train: interrupted by Ctrl+C (SIGINT) at step 2 (epoch 0)")
    assert "Received SIGINT (Ctrl+C)" in caplog.text and "Received SIGTERM" not in caplog.text
    results = read_results(tmp_path)
    assert results["status"] == "interrupted" and results["stopped_by"] == "SIGINT"
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_on_an_accelerator_the_loss_check_reads_the_device_flag_at_the_logging_cadence():
    """No host synchronisation per step: a NaN at step 3 is recorded on the device and reported at step 10."""
    from types import SimpleNamespace

    from sdd_lightning.training.callbacks import FiniteLossCheck

    check = FiniteLossCheck()
    trainer = SimpleNamespace(global_step=0, current_epoch=0, log_every_n_steps=10, optimizers=[])
    check.on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))
    assert check._read_every == 1
    check._read_every = 10  # what an accelerator gets: trainer.log_every_n_steps
    for step, value in [(1, 1.0), (2, 2.0), (3, float("nan")), (4, 1.0)]:
        trainer.global_step = step
        check.on_before_backward(trainer, None, torch.tensor(value))  # recorded, not read
    trainer.global_step = 10
    with pytest.raises(TrainingDiverged, match=r"became non-finite at global step 3 \(epoch 0\)"):
        check.on_before_backward(trainer, None, torch.tensor(1.0))
