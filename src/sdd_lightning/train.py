"""``sdd-train``: the Hydra application that composes a run from ``conf/`` and hands it to Lightning.

    sdd-train                                          # the built-in default (synthetic data, no teacher)
    sdd-train pair=cifar100/res32x4_shv1 distill=sd_kd data.root=/data teacher.checkpoint=...
    sdd-train -m pair=cifar100/res32x4_shv1 distill=kd,sd_kd seed=0,1,2   # a sweep; then: sdd-summary <sweep dir>

A run fits, tests the best checkpoint, and writes ``results.json`` in its output folder. ``main``
returns the best validation top-1 so that Hydra sweepers can optimise it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sdd_lightning.builders import (
    ConfigError,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    check_config,
    is_distillation,
)
from sdd_lightning.catalog import CONF_DIR, PUBLISHED_METRIC, published_top1, setting_name, unknown_group_option
from sdd_lightning.checkpointing import AtomicCheckpointIO, graceful_interrupts, resume_callbacks
from sdd_lightning.provenance import device_name, git_commit, versions
from sdd_lightning.reporting import EvalModeCheck, log_result, reported_errors, run_cli, setup_run_logging

__all__ = ["cli", "main", "train"]

RESULTS_FILE = "results.json"


def current_run_dir() -> Path:
    """The run's output folder (Hydra's ``runtime.output_dir``)."""
    return Path(HydraConfig.get().runtime.output_dir)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path`` when given, else ``<run dir>/checkpoints/last.ckpt`` when it exists, else ``None``."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist: give the path of a last.ckpt to resume")
        return str(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Runs one training job described by ``cfg`` and returns what it writes to ``results.json``."""
    start = time.perf_counter()
    check_config(cfg)
    run_dir = current_run_dir()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    ckpt_path = resume_checkpoint(cfg, run_dir)

    callbacks = [*build_callbacks(cfg), *resume_callbacks(), EvalModeCheck()]
    # instantiated, so that trainer.strategy may be a strategy object (ddp_sim sets its collective timeout)
    trainer_kwargs = instantiate(cfg.trainer, _convert_="all")
    if not any(isinstance(c, ProgressBar) for c in callbacks):
        trainer_kwargs["enable_progress_bar"] = False
    loggers = build_loggers(cfg)
    trainer = L.Trainer(
        **trainer_kwargs,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    setting = setting_name({group: _choice(group) for group in ("experiment", "pair", "distill")})
    resolved = OmegaConf.to_container(cfg, resolve=True) | {"setting": setting}
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config_resolved.yaml")

    status = "finished"
    try:
        with graceful_interrupts():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        status = "interrupted"
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "teacher/"))}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    test_metrics: dict[str, float] = {}
    if status == "finished":
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}

    results = {
        "val/acc1": fit_metrics.get("val/acc1"),
        "val/acc1_best": _measured(module.best_val_acc1),
        "val/acc5": fit_metrics.get("val/acc5"),
        "val/acc5_best": _measured(module.best_val_acc5),
        **test_metrics,
        "teacher/acc1": _measured(module.teacher_acc1) if is_distillation(cfg) else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "status": status,
        "seed": cfg.seed,
        "setting": setting,
        "experiment": _choice("experiment"),
        "overrides": _task_overrides(),
        "task_name": cfg.task_name,
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "distill": cfg.method,
        "student": cfg.student.arch,
        "teacher": cfg.teacher.arch if is_distillation(cfg) else None,
        "published": published_top1(setting),
        "published_metric": PUBLISHED_METRIC,
        "best_checkpoint": best or None,
        "accuracy_units": "fraction (0-1)",
        "world_size": trainer.world_size,
        "device": device_name(trainer),
        "versions": versions(),
        "git_commit": git_commit(),
    }
    _write_results(results, run_dir, trainer)
    _finish_wandb(trainer)
    if trainer.is_global_zero and status == "finished":
        log_result(results, run_dir)
    if status == "interrupted":
        raise SIGTERMException(f"training stopped by a signal; resume with ckpt_path={run_dir}/checkpoints/last.ckpt")
    return results


def _write_results(results: dict[str, Any], run_dir: Path, trainer: L.Trainer) -> None:
    """Rank 0 writes ``results.json``; with several processes every rank also writes its own copy."""
    if trainer.world_size > 1:
        rank_dir = run_dir / "ranks"
        rank_dir.mkdir(parents=True, exist_ok=True)
        (rank_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(results, indent=2))
    if trainer.is_global_zero:
        tmp = run_dir / f".{RESULTS_FILE}.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(run_dir / RESULTS_FILE)


def _finish_wandb(trainer: L.Trainer) -> None:
    """Closes the run's W&B run, so that its files are complete now and the next job of a sweep gets its own."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def _measured(value: Any) -> float | None:
    """A metric buffer as a float, or ``None`` while it still holds -1 (never measured)."""
    value = float(value)
    return None if value < 0 else value


def _choice(group: str) -> str | None:
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        return None


def _task_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The Hydra task: one run; returns the best validation top-1 (for sweepers).

    A known error (a bad value, a broken data set, an unwritable folder, a failed teacher check) ends the
    process with a short message; ``SDD_DEBUG=1`` shows the traceback instead (``reporting``).
    """
    setup_run_logging()
    with reported_errors():
        results = train(cfg)
    return results["val/acc1_best"]


def cli() -> None:
    """``sdd-train``: names the closest options of a mistyped group option, then runs the Hydra app.

    (Hydra's own message for an unknown option lists every option; with a user's own config folder
    (``hydra.searchpath``, ``--config-dir``) the options it adds are not known here, so the check is left to Hydra.)
    """
    args = sys.argv[1:]
    user_configs = ("hydra.searchpath", "+hydra.searchpath", "--config-dir", "-cd", "--config-path", "-cp")
    if not any(arg.startswith(user_configs) for arg in args):
        message = unknown_group_option(args)
        if message:
            print(f"sdd-train: {message}", file=sys.stderr)
            raise SystemExit(2)
    run_cli(main)


if __name__ == "__main__":
    cli()
