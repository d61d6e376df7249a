"""The product as a user meets it: the wheel, installed outside the checkout, driven through its console scripts.

The wheel is built from this checkout and installed with ``pip install --no-deps --target DIR`` beside the
dependencies already installed; every command then runs in a subprocess from a folder outside the checkout,
with DIR first on the path, so nothing can come from the source tree. The asserts are the console scripts'
contract (README, "Commands"): exit 0 on success and non-zero on failure, a user's mistake in at most two
stderr lines without a traceback, nothing printed that was not asked for, and the files each command writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.app import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data=synthetic",
    "data.num_train=128",
    "data.num_val=64",
    "data.batch_size=32",
    "student.arch=tiny_cnn",
    "epochs=1",
    "callbacks=quiet",
    "trainer.num_sanity_val_steps=0",
]
# a user's own experiment, kept in a folder of their own outside the package
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - override /data: synthetic
task_name: my_experiment
student:
  arch: tiny_cnn
epochs: 1
"""


class Installed:
    """The wheel's files in ``target``; ``run`` starts one of its console scripts in ``cwd``."""

    def __init__(self, target: Path, cwd: Path) -> None:
        self.target, self.cwd = target, cwd
        self.env = subprocess_env(installed=target, SDD_DEBUG=None)  # only the wheel; no debug switch, as users run

    def run(self, script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.target / "bin" / script), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    build = tmp_path_factory.mktemp("wheel")
    # the wheel is built from a copy of what it is made of, so the build leaves nothing in the checkout
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(build), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = build.glob("sdd_lightning-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, timeout=300)
    return Installed(target, tmp_path_factory.mktemp("user"))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_the_installed_package_is_the_wheel_and_holds_its_configs(installed):
    where = subprocess.run(
        [sys.executable, "-c", "import sdd_lightning.catalog as c; print(c.__file__); print(c.CONF_DIR)"],
        cwd=installed.cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(installed.target) for p in where)
    assert (Path(where[1]) / "train.yaml").is_file() and (Path(where[1]) / "published.yaml").is_file()
    assert len(list(Path(where[1]).rglob("*.yaml"))) == len(list((ROOT / "src/sdd_lightning/conf").rglob("*.yaml")))


def test_the_wheel_ships_the_library_by_role_and_no_campaign_tooling(installed):
    package = installed.target / "sdd_lightning"
    folders = {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"method", "models", "data", "training", "cli", "reporting", "conf"}
    assert len(list(package.glob("*.py"))) <= 8
    shipped = {p.relative_to(installed.target).parts[0] for p in installed.target.iterdir()}
    assert not {"campaign", "tools", "tests", "reproduction"} & shipped
    assert not list(package.rglob("*ledger*")) and not list(package.rglob("*lease*"))


@pytest.fixture(scope="module")
def user_run(installed) -> Path:
    """A user's own experiment file, outside the package, run with ``sdd-train --config-dir``."""
    config_dir = installed.cwd / "my_configs"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    run_dir = installed.cwd / "runs" / "mine"
    result = installed.run(
        "sdd-train", "--config-dir", str(config_dir), "experiment=mine", *TINY[1:4], "callbacks=quiet",
        "trainer.num_sanity_val_steps=0", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return run_dir


def test_sdd_train_runs_a_users_experiment_from_outside_the_package(installed, user_run):
    results = json.loads((user_run / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs"] == 1
    assert results["experiment"] == "mine" and results["task_name"] == "my_experiment"
    assert (user_run / "train.log").is_file() and (user_run / "checkpoints").is_dir()


def test_sdd_eval_prints_only_its_report_and_exits_0(installed, user_run):
    result = installed.run("sdd-eval", str(user_run))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the report and nothing else
    assert 0.0 <= report["acc1"] <= 1.0
    assert "{" not in result.stderr  # no repr of a return value


def test_sdd_export_writes_the_files_and_exits_0(installed, user_run):
    out = installed.cwd / "ship"
    result = installed.run("sdd-export", str(user_run), "--output-dir", str(out), "--no-measure")
    assert result.returncode == 0, result.stderr
    assert "PosixPath" not in result.stderr and "PosixPath" not in result.stdout
    stems = {p.suffix for p in out.iterdir()}
    assert {".pth", ".safetensors", ".json", ".md"} <= stems


def test_a_users_mistake_is_two_lines_on_stderr_without_a_traceback(installed):
    for script, args in [
        ("sdd-eval", ["no/such/run"]),
        ("sdd-export", ["no/such/run"]),
        ("sdd-summary", ["no/such/folder"]),
        ("sdd-train", ["distill=sd_kdd"]),
    ]:
        result = installed.run(script, *args)
        assert result.returncode != 0, script
        lines = _lines(result.stderr)
        assert 1 <= len(lines) <= 2 and "Traceback" not in result.stderr, (script, result.stderr)
        assert result.stdout == "", script


def test_a_sweep_goes_on_after_a_failed_job_and_the_summary_lists_it(installed):
    sweep = installed.cwd / "sweep"
    result = installed.run(
        "sdd-train", "-m", "student.arch=no_such_net,tiny_cnn", *TINY[:4], *TINY[5:], f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode != 0  # a job failed
    assert "Traceback" not in result.stderr
    failed = json.loads((sweep / "0" / "results.json").read_text())
    assert failed["status"] == "failed" and "student.arch=no_such_net" in failed["overrides"]
    assert "no_such_net" in failed["error"] and len(_lines(failed["error"])) <= 2
    assert json.loads((sweep / "1" / "results.json").read_text())["status"] == "finished"

    summary = installed.run("sdd-summary", str(sweep))
    assert summary.returncode == 0, summary.stderr
    assert "no_such_net" in summary.stdout and str(sweep / "0") in summary.stdout
    assert "no_such_net" in (sweep / "summary.md").read_text()
