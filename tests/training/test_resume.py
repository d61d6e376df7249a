"""Resuming a run: its logs keep their history, its schedule follows the config, its checkpoints stay sound."""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.app import TINY, compose_config, read_results, subprocess_env
from helpers.faults import completed_epochs, csv_rows, start_app, wait_for
from helpers.wandb_records import history
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdd_lightning.cli.train import train
from sdd_lightning.errors import ConfigError
from sdd_lightning.training.callbacks.resume import LastCheckpoint
from sdd_lightning.training.loggers import ResumableCSVLogger, ResumableTensorBoardLogger, ResumableWandbLogger


def wandb_run(folder) -> tuple[str, list[dict]]:
    """The run id (W&B names the log ``run-<id>.wandb``) and history rows of one offline run folder."""
    (log_file,) = folder.glob("run-*.wandb")
    return log_file.stem.removeprefix("run-"), history(log_file)


# -- loggers, on their own ------------------------------------------------------------------------------


def test_csv_logger_keeps_earlier_rows_and_columns_and_drops_the_lost_steps(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"epoch": 0, "train/loss": 1.0}, step=0)
    first.log_metrics({"epoch": 0, "train/loss": 0.9}, step=1)
    first.log_metrics({"epoch": 0, "val/acc1": 0.5}, step=1)
    first.log_metrics({"epoch": 1, "train/loss": 0.8}, step=2)  # logged after the checkpoint at step 2, then killed
    first.finalize("failed")

    second = ResumableCSVLogger(tmp_path, name="csv", version="")
    second.continue_from(2)
    second.log_metrics({"epoch": 1, "train/loss": 0.7, "teacher/acc1": 0.9}, step=2)  # a new column
    second.finalize("success")

    metrics = tmp_path / "csv" / "metrics.csv"
    rows = [(r["step"], r["train/loss"], r["val/acc1"], r["teacher/acc1"]) for r in csv_rows(metrics)]
    assert rows == [("0", "1.0", "", ""), ("1", "0.9", "", ""), ("1", "", "0.5", ""), ("2", "0.7", "", "0.9")]
    lines = metrics.read_text().splitlines()
    assert lines[0] == "epoch,step,teacher/acc1,train/loss,val/acc1"
    assert {line.count(",") for line in lines} == {4}  # every row has every column


def test_csv_logger_of_a_fresh_start_in_an_old_folder_starts_empty(tmp_path):
    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.finalize("success")
    second = ResumableCSVLogger(tmp_path, name="csv", version="")
    second.continue_from(0)
    second.log_metrics({"train/loss": 2.0}, step=0)
    second.finalize("success")
    assert [r["train/loss"] for r in csv_rows(tmp_path / "csv" / "metrics.csv")] == ["2.0"]


def test_tensorboard_logger_continues_its_folder_and_hides_the_lost_steps(tmp_path):
    first = ResumableTensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    for step in range(6):  # steps 4 and 5 come after the checkpoint at step 4
        first.log_metrics({"loss": float(step)}, step)
    first.finalize("failed")
    second = ResumableTensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    second.continue_from(4)
    for step in (4, 5):
        second.log_metrics({"loss": 10.0 * step}, step)
    second.finalize("success")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 40), (5, 50)]


def test_wandb_logger_resumes_the_run_of_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for steps in (range(0, 3), range(3, 5)):
        logger = ResumableWandbLogger(save_dir=str(tmp_path), project="test")
        for step in steps:
            logger.log_metrics({"loss": float(step)}, step=step)
        logger.experiment.finish()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    (first_id, first), (second_id, second) = (wandb_run(run) for run in runs)
    assert first_id == second_id == (tmp_path / "wandb" / "run_id").read_text().strip()
    assert [row["trainer/global_step"] for row in first] == [0, 1, 2]
    assert [row["trainer/global_step"] for row in second] == [3, 4]


# -- a real run, stopped by SIGTERM and resumed in its folder --------------------------------------------


def test_sigterm_and_resume_keep_the_history_of_every_logger(tmp_path):
    loggers = "logger=[csv,tensorboard,wandb]"
    args = [*TINY, "data.num_train=512", loggers, f"hydra.run.dir={tmp_path}"]
    process = start_app([*args, "epochs=1000"])
    metrics = tmp_path / "csv" / "metrics.csv"
    wait_for(lambda: completed_epochs(metrics) >= 1, process, timeout=240, what="the first epoch")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode != 0, output[-3000:]
    before = csv_rows(metrics)
    stopped = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    epoch0 = [row for row in before if row["epoch"] == "0"]
    assert any(row["val/acc1"] for row in epoch0)

    resumed = subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.train", *args, f"epochs={stopped['epoch'] + 2}"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = csv_rows(metrics)
    step = stopped["global_step"]
    # the earlier rows survive, unchanged, under the earlier columns (the test metrics add columns)
    earlier = [{key: row.get(key, "") for key in before[0]} for row in after if int(row["step"]) < step]
    assert earlier == [row for row in before if int(row["step"]) < step]
    assert [row for row in earlier if row["epoch"] == "0"] == epoch0
    assert max(int(r["step"]) for r in after) > step and any(r["test/acc1"] for r in after)
    assert len({len(row) for row in after}) == 1 and None not in after[-1]  # one header for every row

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    val_steps = [e.step for e in events.Scalars("val/acc1")]
    first_val_step = min(int(r["step"]) for r in epoch0 if r["val/acc1"])
    assert val_steps[0] == first_val_step and val_steps[-1] > step  # epoch 0 still there, and continued
    assert val_steps == sorted(set(val_steps))  # no step twice

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    (first_id, first), (second_id, second) = (wandb_run(run) for run in runs)
    assert first_id == second_id
    assert min(row["trainer/global_step"] for row in first) == 0
    assert min(row["trainer/global_step"] for row in second) >= step


# -- the schedule --------------------------------------------------------------------------------------

COMMON = [*TINY, "deterministic=true", "seed=3", "data.num_train=128", "data.num_val=64", "scheduler=cosine"]


def _lrs(run_dir) -> list[str]:
    return [row["lr-SGD"] for row in csv_rows(run_dir / "csv" / "metrics.csv") if row.get("lr-SGD")]


def test_resuming_with_more_epochs_follows_the_new_schedule(tmp_path, caplog):
    straight = train(compose_config([*COMMON, "epochs=3"], tmp_path / "straight"))
    train(compose_config([*COMMON, "epochs=1"], tmp_path / "stopped"))
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    with caplog.at_level("WARNING", logger="sdd_lightning"):
        resumed = train(compose_config([*COMMON, "epochs=3", f"ckpt_path={last}"], tmp_path / "resumed"))
    # the cosine schedule of epochs=3 from epoch 1 on (with the old T_max=1 the LR would be 0, then 0.05 again)
    assert _lrs(tmp_path / "resumed") == _lrs(tmp_path / "straight")[1:]
    assert "CosineAnnealingLR T_max 1 -> 3" in caplog.text
    assert resumed["val/acc1"] == pytest.approx(straight["val/acc1"], abs=1e-6)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["lr_schedulers"][0]["T_max"] == b["lr_schedulers"][0]["T_max"] == 3
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-5, atol=1e-6)

    # a new learning rate and weight decay apply from the resumed epoch on, and the log says so
    changed = ["optimizer.lr=0.1", "optimizer.weight_decay=0.001", "epochs=2", f"ckpt_path={last}"]
    with caplog.at_level("WARNING", logger="sdd_lightning"):
        train(compose_config([*COMMON, *changed], tmp_path / "changed"))
    assert "optimizer weight_decay 0.0005 -> 0.001" in caplog.text
    assert "CosineAnnealingLR base_lrs [0.05] -> [0.1]" in caplog.text
    assert [float(lr) for lr in _lrs(tmp_path / "changed")] == pytest.approx([0.1 * (1 + math.cos(math.pi / 2)) / 2])
    groups = torch.load(tmp_path / "changed" / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"]
    assert groups[0]["param_groups"][0]["weight_decay"] == 0.001

    # another kind of scheduler cannot continue the run's schedule: refused, with what to do
    with pytest.raises(ConfigError, match=r"another learning-rate scheduler.*scheduler="):
        train(compose_config([*COMMON, "scheduler=multistep", "epochs=3", f"ckpt_path={last}"], tmp_path / "other"))


# -- checkpoint files -----------------------------------------------------------------------------------


def test_checkpoints_honour_the_umask_and_stale_temporaries_are_removed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    stale = [checkpoints / ".last.ckpt.k2j4_x9a.tmp", checkpoints / ".best-epoch000-acc0.1000.ckpt.123.abcd.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    previous = os.umask(0o027)
    try:
        train(compose_config([*TINY, "epochs=1"], tmp_path))
    finally:
        os.umask(previous)
    assert not any(path.exists() for path in stale)
    assert not list(checkpoints.glob(".*.tmp"))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*checkpoints.glob("*.ckpt"), tmp_path / "results.json"]}
    assert len(modes) == 3 and set(modes.values()) == {0o640}, modes


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from sdd_lightning.training.checkpointing import AtomicCheckpointIO
    target, started = sys.argv[1], sys.argv[2]

    def stalled_save(obj, file):
        file.write(b"the first bytes of a checkpoint")
        file.flush()
        open(started, "w").close()
        time.sleep(600)

    torch.save = stalled_save
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    """
)


def test_a_writer_killed_mid_checkpoint_leaves_last_ckpt_intact_and_the_next_run_cleans_up(tmp_path):
    train(compose_config([*TINY, "epochs=1"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    started = tmp_path / "started"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(last), str(started)], env=subprocess_env())
    wait_for(started.exists, writer, timeout=120, what="the checkpoint write")
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    assert len(list(last.parent.glob(".last.ckpt.*.tmp"))) == 1
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the previous last.ckpt, whole
    again = train(compose_config([*TINY, "epochs=2"], tmp_path))  # resumes from last.ckpt in the same folder
    assert again["global_step"] == 8 and not list(last.parent.glob(".*.tmp"))


def test_a_failure_mid_epoch_leaves_the_last_good_checkpoint(tmp_path):
    fail = ["+callbacks.fail._target_=helpers.faults.FailAtStep", "+callbacks.fail.step=6"]
    train(compose_config([*TINY, "epochs=1"], tmp_path))  # last.ckpt at step 4 (end of epoch 0)
    with pytest.raises(RuntimeError, match="injected failure"):
        train(compose_config([*TINY, "epochs=3", *fail], tmp_path))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = train(compose_config([*TINY, "epochs=2"], tmp_path))
    assert resumed["global_step"] == 8 and read_results(tmp_path)["status"] == "finished"


def test_last_checkpoint_restores_the_state_of_checkpoints_written_before_it_existed(tmp_path):
    settings = {"dirpath": tmp_path, "filename": "last", "monitor": None, "every_n_epochs": 1}
    assert LastCheckpoint(**settings, save_on_exception=True).state_key == ModelCheckpoint(**settings).state_key
