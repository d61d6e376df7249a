"""Where a run came from: the machine, the package versions and the project's commit (for results.json)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import lightning as L
import torch

__all__ = ["device_name", "git_commit", "versions"]

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def device_name(trainer: L.Trainer) -> str:
    """The device the run trained on: the GPU's name, or the CPU."""
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return torch.cuda.get_device_name(root)
    return f"{root.type}: {platform.processor() or platform.machine()}"


def versions() -> dict[str, str]:
    """Python's and the main packages' versions."""
    found = {"python": platform.python_version()}
    for package in ("sdd-lightning", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit() -> str | None:
    """The project's commit (with ``+dirty`` when the tree has changes), or ``None`` outside a checkout."""
    if not (PROJECT_ROOT / "src" / "sdd_lightning").is_dir():
        return None  # an installed package: the folders above it are not this project's checkout
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")
