"""What a run says: its result, its log file, which warnings it shows, and short messages for user errors."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import warnings

import lightning as L
import pytest
import torch
from helpers.app import TINY, subprocess_env
from torch import nn

from sdd_lightning.cli.messages import describe_error, quiet_warnings
from sdd_lightning.errors import ConfigError, DatasetError
from sdd_lightning.training.callbacks.health import EvalModeCheck


def sdd_train(args: list[str], preexec_fn=None, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.train", *args],
        env=subprocess_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=400,
        preexec_fn=preexec_fn,
    )


NOISE = {
    "Lightning's pytree deprecation": "LeafSpec",
    "the frozen teacher in eval mode": "in eval mode at the start of training",
    "more workers than cores": "worker processes in total",
    "pin_memory without a GPU": "pin_memory",
    "the litlogger tip": "litlogger",
    "W&B's warning about an option Lightning passes": "anonymous setting has no effect",
}


def test_a_run_prints_its_result_keeps_its_log_and_shows_only_warnings_that_matter(tmp_path):
    workers = (os.cpu_count() or 1) + 1  # more than torch suggests for this machine
    result = sdd_train(
        [
            *TINY,
            "epochs=1",
            "distill=sd_kd",
            "teacher.arch=tiny_cnn",
            "teacher.allow_random=true",
            "data.device_resident=false",
            f"data.num_workers={workers}",
            "+data.pin_memory=true",
            "trainer.log_every_n_steps=50",  # more than the 4 steps of an epoch: a warning the user can act on
            "logger=[csv,wandb]",
            f"hydra.run.dir={tmp_path}",
        ],
        WANDB_SILENT="false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for what, text in NOISE.items():
        assert text not in output, f"{what} is still shown:\n{output[-3000:]}"
    assert "smaller than the logging interval" in output  # a real warning still shows
    assert "sdd-train: finished 1 epoch" in result.stderr
    for name in ("top-1", "best top-1", "top-5", "teacher top-1"):
        assert f"{name} " in result.stderr, name
    assert f"run folder {tmp_path}" in result.stderr
    log = (tmp_path / "train.log").read_text()
    assert "Trainer.fit` stopped" in log and "sdd-train: finished 1 epoch" in log
    assert "smaller than the logging interval" in log and "litlogger" not in log


def test_eval_mode_check_names_modules_that_train_and_not_the_frozen_teacher():
    class Pair(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
            self.teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout()).requires_grad_(False).eval()

    pair = Pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EvalModeCheck().on_train_start(None, pair)
    assert not caught
    pair.student[1].eval()
    with pytest.warns(UserWarning, match=r"1 module\(s\) that train are in eval mode.*: student\.1$"):
        EvalModeCheck().on_train_start(None, pair)


def test_quiet_warnings_leave_other_warnings_alone():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("'pin_memory' argument is set as true but no accelerator is found", UserWarning, stacklevel=1)
        warnings.warn("a learning rate of 10 is probably too high", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a learning rate of 10 is probably too high"]


# -- errors a user fixes: two lines, no traceback --------------------------------------------------------


def test_a_configuration_error_is_two_lines_and_sdd_debug_shows_the_traceback(tmp_path):
    args = [*TINY, "epochs=1", "student.arch=resnet9000", f"hydra.run.dir={tmp_path}"]
    result = sdd_train(args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("sdd-train: configuration error: unknown student.arch='resnet9000'")
    assert lines[1] == "(SDD_DEBUG=1 shows the full traceback)"
    # the run folder exists (Hydra made it for train.log): it says the run failed, and why
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == lines[0].removeprefix("sdd-train: ")
    assert "student.arch=resnet9000" in results["overrides"]
    debug = sdd_train(args, SDD_DEBUG="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_a_data_error_inside_fit_is_short(tmp_path):
    missing = tmp_path / "no-data-here"
    args = ["data=cifar100", f"data.root={missing}", "data.num_workers=0", "student.arch=tiny_cnn", "epochs=1"]
    result = sdd_train([*args, "callbacks=quiet", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    started = "sdd-train: tiny_cnn, no teacher, 1 epoch on CIFAR-100; writing to "
    message = [line for line in result.stderr.splitlines() if line.startswith("sdd-train:")]
    assert message.pop(0).startswith(started)  # the start line, then the error
    assert len(message) == 1 and message[0].startswith(f"sdd-train: data error: CIFAR-100 not found under {missing}")
    assert "data.root=" in result.stderr


def _without_root_privileges() -> None:
    """In the child: drop the capabilities that let root write anywhere, so folder permissions apply."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_a_read_only_output_folder_is_named_with_the_fix(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    preexec = None
    if os.geteuid() == 0:
        probe = subprocess.run(["true"], preexec_fn=_without_root_privileges, check=False, capture_output=True)
        if probe.returncode != 0:
            pytest.skip("running as root without the right to drop privileges: a folder's mode does not apply")
        preexec = _without_root_privileges
    try:
        result = sdd_train([*TINY, "epochs=1", f"hydra.run.dir={run_dir}"], preexec_fn=preexec)
    finally:
        run_dir.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"sdd-train: cannot use {run_dir / 'train.log'}: Permission denied")
    assert f"the output folder {run_dir} must be writable" in lines[0] and "hydra.run.dir=" in lines[0]


def test_known_errors_are_found_behind_wrappers():
    wrapped = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "sdd_lightning.errors.DatasetError: cannot read image /d/a.png: UnidentifiedImageError: bad\n"
    )
    message = "sdd-train: data error: cannot read image /d/a.png: UnidentifiedImageError: bad"
    assert describe_error(wrapped) == (message, 2)
    try:
        try:
            raise ConfigError("ckpt_path=x does not exist")
        except ConfigError as error:
            raise RuntimeError("a library's wrapper") from error
    except RuntimeError as outer:
        assert describe_error(outer) == ("sdd-train: configuration error: ckpt_path=x does not exist", 2)
    assert describe_error(ValueError("a bug")) is None
    assert describe_error(torch.cuda.OutOfMemoryError("CUDA out of memory")) is None
