"""Composing the Hydra config of sdd-train inside tests; the one environment of the suite's subprocesses, and
runs of the app in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from sdd_lightning.catalog import CONF_DIR

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]

# A test-sized run: tiny networks, a small synthetic set, one CPU process, no progress bar.
TINY = [
    "data=synthetic",
    "data.num_train=256",
    "data.num_val=128",
    "data.batch_size=64",
    "student.arch=tiny_cnn",
    "callbacks=quiet",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The config ``sdd-train <overrides>`` would run, with Hydra's runtime set up as in a real run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
    return cfg


def subprocess_env(*, installed: Path | None = None, **extra: str | None) -> dict[str, str]:
    """The environment of every subprocess the suite starts: this process's, as a user runs the commands.

    This checkout's ``src`` and ``tests`` come first on ``PYTHONPATH`` (the configs and the subprocesses find
    ``helpers``); W&B is offline and silent and starts a service of its own (``WANDB_SERVICE`` is set once W&B
    ran in the test process); one OpenMP thread; unbuffered output; short errors (``SDD_DEBUG=0``, no
    ``HYDRA_FULL_ERROR``). ``installed``: the folder a wheel was installed into (``pip install --target``); it
    alone is on ``PYTHONPATH`` and its ``bin`` first on ``PATH``, so nothing can come from the checkout.
    ``extra`` sets variables; a value ``None`` removes one (``SDD_DEBUG=None``: neither debug variable set).
    """
    if installed is None:
        path = os.pathsep.join(filter(None, [str(SRC), str(TESTS), os.environ.get("PYTHONPATH")]))
        env = os.environ | {"PYTHONPATH": path}
    else:
        env = os.environ | {
            "PYTHONPATH": str(installed),
            "PATH": os.pathsep.join([str(installed / "bin"), os.environ["PATH"]]),
        }
    env |= {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "SDD_DEBUG": "0",
    }
    for name in ("HYDRA_FULL_ERROR", "WANDB_SERVICE"):
        env.pop(name, None)
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_app(args: list[str], timeout: int = 300, **extra_env: str | None) -> subprocess.CompletedProcess:
    """``python -m sdd_lightning.cli.train <args>`` in a subprocess (needed for DDP and multiruns)."""
    return subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(**extra_env),
    )


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())
