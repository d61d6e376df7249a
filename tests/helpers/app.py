"""Composing the Hydra config of sdd-train inside tests, and running the app in a subprocess."""

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


def run_app(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m sdd_lightning.cli.train <args>`` in a subprocess (needed for DDP and multiruns)."""
    full_env = os.environ | {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sdd_lightning.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env | (env or {}),
    )


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())
