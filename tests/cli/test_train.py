"""End-to-end runs of sdd-train on tiny fixtures: every method, results.json, resume, loggers, bad input."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.app import TINY, compose_config, read_results, run_app, subprocess_env
from helpers.faults import start_app
from hydra.errors import MissingConfigException

from sdd_lightning.cli.train import train
from sdd_lightning.errors import ConfigError

METHODS = ["kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A tiny teacher trained with distill=none; its checkpoint is then a valid teacher.checkpoint."""
    run_dir = tmp_path_factory.mktemp("teacher")
    cfg = compose_config([*TINY, "student.arch=small_cnn", "epochs=2"], run_dir)
    train(cfg)
    return run_dir


def test_teacher_run_writes_results_and_checkpoints(teacher_run):
    results = read_results(teacher_run)
    for key in ("val/acc1", "val/acc1_best", "val/acc5", "test/acc1", "epochs", "wall_time_s", "seed", "versions"):
        assert key in results, key
    assert results["epochs"] == 2 and results["status"] == "finished"
    assert 0.0 <= results["val/acc1"] <= results["val/acc1_best"] <= 1.0
    assert results["val/acc1"] <= results["val/acc5"]
    assert results["teacher/acc1"] is None and results["distill"] == "none"
    assert (teacher_run / "checkpoints" / "last.ckpt").is_file()
    assert Path(results["best_checkpoint"]).is_file()
    assert (teacher_run / "config_resolved.yaml").is_file()
    assert (teacher_run / "csv" / "metrics.csv").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_end_to_end(method, teacher_run, tmp_path):
    teacher_ckpt = teacher_run / "checkpoints" / "last.ckpt"
    probe = [
        "+callbacks.probe._target_=helpers.probes.NormLayerProbe",
        f"+callbacks.probe.path={tmp_path / 'norms.json'}",
    ]
    overrides = [f"distill={method}", "teacher.arch=small_cnn", f"teacher.checkpoint={teacher_ckpt}", "epochs=1"]
    cfg = compose_config([*TINY, *overrides, *probe], tmp_path)
    results = train(cfg)
    # trainer=cpu (the default) folds the teacher's BatchNorm into its convolutions; the student keeps its own
    assert json.loads((tmp_path / "norms.rank0.json").read_text()) == {"student": ["BatchNorm2d"], "teacher": []}
    assert read_results(tmp_path) == json.loads(json.dumps(results))
    assert results["distill"] == method and results["epochs"] == 1
    assert 0.0 <= results["val/acc1_best"] <= 1.0
    # the teacher measured in the run is the teacher that was trained above
    teacher_acc = read_results(teacher_run)["val/acc1"]
    assert results["teacher/acc1"] == pytest.approx(teacher_acc, abs=1e-6)


def test_resume_continues_where_it_stopped(tmp_path):
    common = [*TINY, "deterministic=true", "seed=3", "data.num_train=128", "data.num_val=64"]
    straight = train(compose_config([*common, "epochs=4"], tmp_path / "straight"))
    train(compose_config([*common, "epochs=2"], tmp_path / "stopped"))
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    resumed = train(compose_config([*common, "epochs=4", f"ckpt_path={last}"], tmp_path / "resumed"))
    assert resumed["epochs"] == 4
    assert resumed["val/acc1"] == pytest.approx(straight["val/acc1"], abs=1e-6)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resuming_in_the_same_run_folder_picks_up_last_ckpt(tmp_path):
    train(compose_config([*TINY, "epochs=1"], tmp_path))
    again = train(compose_config([*TINY, "epochs=2"], tmp_path))
    assert again["epochs"] == 2 and again["global_step"] == 2 * 4  # 256 images / 64 per batch, 2 epochs


def test_wandb_offline_writes_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(compose_config([*TINY, "epochs=1", "logger=[csv,wandb]"], tmp_path))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*") if p.is_file()}
    assert any(name.endswith(".wandb") for name in files)  # the metrics log
    config_text = next(runs[0].rglob("config.yaml"), None)
    if config_text is not None:
        assert "tiny_cnn" in config_text.read_text()


def _bad(overrides, tmp_path):
    with pytest.raises(ConfigError) as error:
        train(compose_config([*TINY, "epochs=1", *overrides], tmp_path))
    return str(error.value)


def test_bad_input_fails_before_training_naming_the_fix(teacher_run, tmp_path):
    ckpt = teacher_run / "checkpoints" / "last.ckpt"
    with_teacher = ["teacher.arch=small_cnn", f"teacher.checkpoint={ckpt}"]
    assert "student.arch" in _bad(["student.arch=resnet9000"], tmp_path)
    message = _bad(["distill=kd", "teacher.arch=small_cnn"], tmp_path)
    assert "teacher.checkpoint" in message and "teacher.allow_random" in message
    message = _bad(["distill=kd", "teacher.arch=tiny_cnn", f"teacher.checkpoint={ckpt}"], tmp_path)
    assert "teacher.arch" in message and "small_cnn" in message
    assert "classes" in _bad(["distill=kd", *with_teacher, "data.num_classes=10"], tmp_path)
    assert "distill.scales" in _bad(["distill=sd_kd", *with_teacher, "distill.scales=[1,0]"], tmp_path)
    assert "distill.scales" in _bad(["distill=sd_kd", *with_teacher, "distill.scales=[2,4]"], tmp_path)
    message = _bad(["distill=kd", "teacher.arch=small_cnn", "teacher.checkpoint=/nonexistent.pth"], tmp_path)
    assert "teacher.checkpoint" in message
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_group_options_are_refused_by_name():
    for override in ("distill=sdkd", "data=cifar10"):
        with pytest.raises(MissingConfigException) as error:
            compose_config([override])
        # Hydra's message names the missing option and lists the available ones
        assert override.split("=")[1] in str(error.value) and "Available options" in str(error.value)


def test_multirun_and_summary(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_app(["-m", *TINY, "epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.rglob("results.json")) == ["0", "1"]
    summary = subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.summary", str(sweep)],
        capture_output=True,
        text=True,
        check=True,
        env=subprocess_env(),
    )
    assert "| 2 | 0,1 |" in summary.stdout
    assert (sweep / "summary.md").is_file() and (sweep / "summary.csv").is_file()


def test_ddp_sim_trains_on_two_processes_with_the_same_validation_accuracy(tmp_path):
    result = run_app([*TINY, "epochs=1", "trainer=ddp_sim", f"hydra.run.dir={tmp_path}"], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["val/acc1"] == ranks[1]["val/acc1"]
    assert ranks[0]["val/acc1_best"] == ranks[1]["val/acc1_best"]
    # each rank saw half of the 256 training images per epoch: 2 steps of 64
    assert ranks[0]["global_step"] == 2


def test_sigterm_saves_last_ckpt_and_the_run_resumes(tmp_path):
    args = [*TINY, "epochs=1000", "data.num_train=512", f"hydra.run.dir={tmp_path}"]
    process = start_app(args)
    metrics = tmp_path / "csv" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") > 3):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output[-2000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file(), output[-2000:]
    results = read_results(tmp_path)
    assert results["status"] == "interrupted"
    stopped_at = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped_at > 0
    resumed = run_app([*TINY, f"epochs={results['epochs'] + 2}", f"hydra.run.dir={tmp_path}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_results(tmp_path)["global_step"] > stopped_at


def test_the_console_script_finds_the_config_from_any_folder(tmp_path):
    script = Path(sys.executable).parent / "sdd-train"
    result = subprocess.run(
        [str(script), "--cfg", "job", "distill=sd_kd"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "method: sd_kd" in result.stdout


def test_results_hold_the_best_and_the_last_epoch_as_logged(tmp_path):
    """A run whose last epoch is not its best: ``val/acc1_best`` is the logged maximum, ``val/acc1`` the last."""
    results = train(compose_config([*TINY, "epochs=4", "optimizer.lr=1.0", "scheduler=none"], tmp_path))
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = [float(row["val/acc1"]) for row in csv.DictReader(f) if row.get("val/acc1")]
    assert len(logged) == 4
    assert max(logged) > logged[-1], "the case this test is for: pick another optimizer.lr if the last epoch is best"
    assert results["val/acc1_best"] == pytest.approx(max(logged)) and results["val/acc1"] == pytest.approx(logged[-1])
    assert read_results(tmp_path)["val/acc1_best"] == results["val/acc1_best"]
