"""``sdd-train``: the Hydra application that composes a run from ``conf/`` and hands it to Lightning.

    sdd-train                                          # the built-in default (synthetic data, no teacher)
    sdd-train pair=cifar100/res32x4_shv1 distill=sd_kd data.root=/data teacher.checkpoint=...
    sdd-train -m pair=cifar100/res32x4_shv1 distill=kd,sd_kd seed=0,1,2   # a sweep; then: sdd-summary <sweep dir>

A run says in one line what it trains and where it writes, holds a lock on its output folder (one run per
folder), fits, tests the best checkpoint, and writes ``results.json`` there: ``"status"`` is ``finished``,
``interrupted`` (SIGTERM, Ctrl+C: resume in the same folder), ``failed`` or ``diverged`` (with ``"error"``).
``main`` returns the best validation top-1 so that Hydra sweepers can optimise it; in a sweep (``-m``) a
failed job does not stop the others, and the process exits non-zero at the end. ``cli()`` returns the exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sdd_lightning.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    check_accelerator,
    check_config,
    check_scales_fit,
    configure_teacher_cache,
    is_distillation,
)
from sdd_lightning.catalog import (
    CONF_DIR,
    PUBLISHED_METRIC,
    published_top1,
    published_top5,
    setting_name,
    unknown_group_option,
)
from sdd_lightning.cli.messages import (
    debug_requested,
    log_result,
    log_start,
    report_error,
    run_cli,
    setup_run_logging,
    short_error,
)
from sdd_lightning.errors import ConfigError, RunFolderInUse, TrainingDiverged
from sdd_lightning.reporting.model_card import write_atomically
from sdd_lightning.reporting.provenance import device_name, git_commit, versions
from sdd_lightning.training.callbacks import FiniteLossCheck
from sdd_lightning.training.callbacks.health import EvalModeCheck
from sdd_lightning.training.callbacks.resume import RunRecord, resume_callbacks
from sdd_lightning.training.checkpointing import (
    AtomicCheckpointIO,
    check_resume_fits,
    describe_load_failure,
    graceful_interrupts,
)
from sdd_lightning.training.run_lock import hold_run_folder, launched_as_rank_zero

__all__ = ["cli", "main", "train"]

RESULTS_FILE = "results.json"

log = logging.getLogger("sdd_lightning")


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
    """Runs one training job described by ``cfg`` and returns what it writes to ``results.json``.

    The run holds its folder's lock (``run_lock``) throughout. A run that fails writes ``results.json`` with
    ``"status": "failed"`` (``"diverged"`` for a non-finite loss) and the short ``"error"``, then re-raises.
    """
    record = RunRecord()
    run_dir = current_run_dir()
    with hold_run_folder(run_dir):
        try:
            return _train(cfg, run_dir, record)
        except Exception as error:
            _write_failure(cfg, run_dir, record, error)
            raise


def _train(cfg: DictConfig, run_dir: Path, record: RunRecord) -> dict[str, Any]:
    check_config(cfg)
    check_accelerator(cfg, _choice("trainer"))
    setting = setting_name({group: _choice(group) for group in ("experiment", "pair", "distill")})
    ckpt_path = resume_checkpoint(cfg, run_dir)
    if launched_as_rank_zero():
        log_start(
            setting=setting,
            student=cfg.student.arch,
            teacher=cfg.teacher.arch if is_distillation(cfg) else None,
            method=str(cfg.get("method")),
            data_class=_data_name(cfg),
            epochs=cfg.epochs,
            run_dir=run_dir,
            resume_from=ckpt_path,
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    configure_teacher_cache(cfg, datamodule)
    module = build_module(cfg, datamodule.num_classes)
    check_scales_fit(module, datamodule)
    record.networks = _networks(cfg, datamodule.num_classes)
    if ckpt_path:
        check_resume_fits(ckpt_path, module, record.networks)

    callbacks = [*build_callbacks(cfg), *resume_callbacks(), record, EvalModeCheck(), FiniteLossCheck()]
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
    resolved = OmegaConf.to_container(cfg, resolve=True) | {"setting": setting}
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config_resolved.yaml")

    status = "finished"
    try:
        with graceful_interrupts() as interrupt:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        status = "interrupted"
    except RuntimeError as error:
        refusal = describe_load_failure(ckpt_path, error) if ckpt_path else None
        if refusal is None:
            raise
        raise refusal from error
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
        **_progress(record),
        "status": status,
        **({"stopped_by": interrupt.signal_name} if status == "interrupted" else {}),
        **_config_facts(cfg),
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
        message = (
            f"sdd-train: {interrupt.description} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"resume with hydra.run.dir={run_dir} (or ckpt_path={run_dir}/checkpoints/last.ckpt)"
        )
        rank_zero_only(log.info)(message)
        raise SIGTERMException(message)
    return results


def _progress(record: RunRecord) -> dict[str, Any]:
    """How far the run got and what it cost, over all its attempts."""
    trainer = record.trainer
    return {
        "epochs": trainer.current_epoch if trainer else 0,
        "global_step": trainer.global_step if trainer else 0,
        "wall_time_s": round(record.wall_time_s, 2),
        "attempts": record.attempts,
    }


def _safely(value: Callable[[], Any]) -> Any:
    try:
        return value()
    except Exception:  # a failed run's config may be the reason it failed
        return None


def _data_name(cfg: DictConfig) -> str:
    return str(cfg.data._target_).rsplit(".", 1)[-1]


def _config_facts(cfg: DictConfig) -> dict[str, Any]:
    """What ``results.json`` says about the run's setting, from its config (``None`` where it cannot say)."""
    setting = _safely(lambda: setting_name({group: _choice(group) for group in ("experiment", "pair", "distill")}))
    distilling = _safely(lambda: is_distillation(cfg))
    return {
        "seed": _safely(lambda: cfg.seed),
        "setting": setting,
        "experiment": _choice("experiment"),
        "overrides": _task_overrides(),
        "task_name": _safely(lambda: cfg.task_name),
        "data": _safely(lambda: _data_name(cfg)),
        "distill": _safely(lambda: cfg.method),
        "student": _safely(lambda: cfg.student.arch),
        "teacher": _safely(lambda: cfg.teacher.arch) if distilling else None,
        "published": _safely(lambda: published_top1(setting)) if setting else None,
        "published_top5": _safely(lambda: published_top5(setting)) if setting else None,
        "published_metric": PUBLISHED_METRIC,
    }


def _networks(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    """The settings that decide the shapes of a run's weights (kept in its checkpoints, see ``RunRecord``)."""
    distilling = is_distillation(cfg)

    def kwargs(role: str) -> dict[str, Any]:
        node = cfg[role].get("kwargs")
        return OmegaConf.to_container(node, resolve=True) if node is not None else {}

    return {
        "num_classes": num_classes,
        "student.arch": cfg.student.arch,
        "student.kwargs": kwargs("student"),
        "teacher.arch": cfg.teacher.arch if distilling else None,
        "teacher.kwargs": kwargs("teacher") if distilling else {},
    }


def _write_failure(cfg: DictConfig, run_dir: Path, record: RunRecord, error: BaseException) -> None:
    """``results.json`` of a run that failed: its status, short error, setting and progress (rank 0 only)."""
    if isinstance(error, RunFolderInUse) or not launched_as_rank_zero() or not run_dir.is_dir():
        return  # a folder in use is another run's
    message = " ".join(short_error(error)[0].removeprefix("sdd-train: ").split())  # one line
    results = {
        "status": "diverged" if isinstance(error, TrainingDiverged) else "failed",
        "error": message,
        **_progress(record),
        **_config_facts(cfg),
        "versions": _safely(versions),
        "git_commit": _safely(git_commit),
    }
    try:
        _atomic_write(run_dir / RESULTS_FILE, results)
    except OSError as write_error:  # e.g. the full disk that made the run fail
        log.warning(f"could not write {run_dir / RESULTS_FILE}: {write_error.strerror}")


def _atomic_write(path: Path, results: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(results, indent=2).encode())


def _write_results(results: dict[str, Any], run_dir: Path, trainer: L.Trainer) -> None:
    """Rank 0 writes ``results.json``; with several processes every rank also writes its own copy."""
    if trainer.world_size > 1:
        rank_dir = run_dir / "ranks"
        rank_dir.mkdir(parents=True, exist_ok=True)
        (rank_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(results, indent=2))
    if trainer.is_global_zero:
        _atomic_write(run_dir / RESULTS_FILE, results)


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


# The jobs of this process's sweep (-m) that failed: "<job folder>: <error>"; cli() reports them at the end.
_failed_jobs: list[str] = []
_jobs_run = 0


def _sweeping() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The Hydra task: one run; returns the best validation top-1 (for sweepers).

    A known error (a bad value, a broken data set, an unwritable folder, a failed teacher check) ends the
    process with a short message; ``SDD_DEBUG=1`` shows the traceback instead (``reporting``). In a sweep
    (``-m``) a failed job is logged and noted instead, returns NaN (a failed trial for Optuna), and the sweep
    goes on; ``cli()`` exits non-zero at its end.
    """
    global _jobs_run
    setup_run_logging()
    sweeping = _sweeping()
    _jobs_run += 1
    try:
        results = train(cfg)
    except Exception as error:
        if debug_requested() and not sweeping:
            raise
        message, code = report_error(error)
        if not sweeping:
            raise SystemExit(code) from None
        _failed_jobs.append(f"{current_run_dir()}: {' '.join(message.removeprefix('sdd-train: ').split())}")
        return float("nan")
    return results["val/acc1_best"]


def cli() -> int:
    """``sdd-train``: names the closest options of a mistyped group option, then runs the Hydra app.

    Returns the exit code: 0 when the run (every job of a sweep) succeeded. A failed run has said why; a
    sweep with failed jobs ends with one line per failed job and a count.

    (Hydra's own message for an unknown option lists every option; with a user's own config folder
    (``hydra.searchpath``, ``--config-dir``) the options it adds are not known here, so the check is left to Hydra.)
    """
    global _jobs_run
    args = sys.argv[1:]
    user_configs = ("hydra.searchpath", "+hydra.searchpath", "--config-dir", "-cd", "--config-path", "-cp")
    if not any(arg.startswith(user_configs) for arg in args):
        message = unknown_group_option(args)
        if message:
            print(f"sdd-train: {message}", file=sys.stderr)
            return 2
    _failed_jobs.clear()
    _jobs_run = 0
    try:
        run_cli(main)
    except SIGTERMException:
        return 1  # stopped by a signal; the run has logged how to resume
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    if _failed_jobs:
        for line in _failed_jobs:
            print(f"sdd-train: job {line}", file=sys.stderr)
        print(
            f"sdd-train: {len(_failed_jobs)} of {_jobs_run} jobs failed (each one's results.json says why)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
