"""Benchmark: one full distillation training step, through Lightning and through a bare PyTorch loop.

Usage::

    .venv/bin/python benchmarks/bench_step.py [--rounds 3] [--steps 3] [--settings baseline,tuned] [--out report.md]

A step is: the teacher's forward without gradients, the student's forward and backward, an SGD step. Pairs
ResNet32x4 -> ResNet8x4 and ResNet32x4 -> ShuffleV1 at B=64 (32x32 random images, 100 classes); KD
(``scales=(1,)``) and SD-KD (``scales=(1, 2, 4)``), both with the SD-KD recipe's T=4, CE 0.1, KD 0.9.

- ``lightning``: ``DistillationModule`` fitted by a ``lightning.Trainer`` on an in-memory random dataset
  (progress bar, logger, checkpointing, validation and model summary off); each step is timed by a callback
  from ``on_train_batch_start`` to ``on_train_batch_end`` (so data loading is outside, as in ``bare``).
- ``bare``: the same models, head and loss functions (``ScaleDecoupledHead``, ``ScaleDecoupledLoss``,
  ``F.cross_entropy``) and ``torch.optim.SGD`` in a plain loop, timed from the batch in hand to after
  ``optimizer.step()``.

Settings (``--settings``): ``baseline`` = fp32, contiguous, teacher as loaded; ``tuned`` = fp32,
channels_last, teacher BatchNorm folded (the CPU defaults this benchmark justifies); ``bf16`` = ``tuned`` plus
bf16 autocast (Lightning ``precision="bf16-mixed"``; very slow on CPUs without native bf16, off by default).

Measurement is interleaved in rounds: every round runs, for every configuration, one short fit (or loop) of
``1 + --steps`` steps and discards its first step; the samples of all rounds are pooled.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HostReadCounter,
    Timing,
    add_common_args,
    interleaved,
    load_average,
    machine_description,
    markdown_table,
    setup_threads,
    write_report,
)

from sdd_lightning.method.heads import ScaleDecoupledHead
from sdd_lightning.method.losses import KDLoss, ScaleDecoupledLoss
from sdd_lightning.models import build_model
from sdd_lightning.models.fold_bn import fold_batchnorm
from sdd_lightning.training.module import DistillationModule

CLASSES = 100
PAIRS = {
    "ResNet32x4 -> ResNet8x4": ("resnet32x4", "resnet8x4", 0.05),
    "ResNet32x4 -> ShuffleV1": ("resnet32x4", "ShuffleV1", 0.01),
}
# Only for measuring Lightning's own per-step cost, where the networks cost next to nothing.
OVERHEAD_PAIR = {"small_cnn -> tiny_cnn (overhead probe)": ("small_cnn", "tiny_cnn", 0.05)}
# Final feature maps (C, h, w) at 32x32 input, for the SD-KD-only part of the step.
FEATURE_MAPS = {"resnet32x4": (256, 8, 8), "resnet8x4": (256, 8, 8), "ShuffleV1": (960, 4, 4)}
METHODS = {"KD": (1,), "SD-KD": (1, 2, 4)}
SETTINGS = {
    "baseline": dict(channels_last=False, fold=False, bf16=False),
    "tuned": dict(channels_last=True, fold=True, bf16=False),
    "bf16": dict(channels_last=True, fold=True, bf16=True),
}
LOSS = dict(loss=KDLoss(temperature=4.0), ce_weight=0.1, kd_weight=0.9)


@dataclass(frozen=True)
class Config:
    pair: str
    method: str
    setting: str
    runner: str

    @property
    def label(self) -> str:
        return f"{self.pair} | {self.method} | {self.setting} | {self.runner}"


def _loader(batch: int, steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    n = batch * (steps + 1)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, CLASSES, (n,), generator=g))
    return DataLoader(data, batch_size=batch, shuffle=False, drop_last=True)


def _models(pair: str, fold: bool) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    teacher_name, student_name, lr = (PAIRS | OVERHEAD_PAIR)[pair]
    torch.manual_seed(0)
    teacher = build_model(teacher_name, num_classes=CLASSES).eval().requires_grad_(False)
    student = build_model(student_name, num_classes=CLASSES)
    if fold:
        fold_batchnorm(teacher)
    return teacher, student, lr


def _sgd(lr: float):
    return partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4)


class StepTimer(L.Callback):
    """Wall and process CPU seconds of every training batch, from batch start to batch end."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


class LightningRunner:
    def __init__(self, config: Config, batch: int, steps: int) -> None:
        setting = SETTINGS[config.setting]
        teacher, student, lr = _models(config.pair, setting["fold"])
        # The teacher is folded above (or not), so the module's own option stays off here; it calls the same
        # function. The module is reused across rounds, so its oneDNN primitives stay warm as in a long run.
        self.module = DistillationModule(
            student,
            teacher,
            num_classes=CLASSES,
            scales=METHODS[config.method],
            optimizer=_sgd(lr),
            channels_last=setting["channels_last"],
            **LOSS,
        )
        self.precision = "bf16-mixed" if setting["bf16"] else "32-true"
        self.loader = _loader(batch, steps)
        self.steps = steps

    def run(self) -> tuple[list[float], list[float]]:
        timer = StepTimer()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision=self.precision,
            max_steps=self.steps + 1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(self.module, self.loader)
        return timer.wall[1:], timer.cpu[1:]


class BareRunner:
    def __init__(self, config: Config, batch: int, steps: int) -> None:
        setting = SETTINGS[config.setting]
        self.teacher, self.student, lr = _models(config.pair, setting["fold"])
        self.channels_last = setting["channels_last"]
        self.bf16 = setting["bf16"]
        if self.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
            self.student.to(memory_format=torch.channels_last)
        self.head = ScaleDecoupledHead(METHODS[config.method])
        self.optimizer = _sgd(lr)(self.student.parameters())
        self.loader = _loader(batch, steps)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad():
                teacher_local = self.head(self.teacher.forward_features(x), self.teacher.get_classifier())
            student_local = self.head(self.student.forward_features(x), self.student.get_classifier())
        student_local = student_local.float()
        ce = F.cross_entropy(student_local[:, 0], y)
        sdd = ScaleDecoupledLoss(LOSS["loss"])(student_local, teacher_local.float(), y)
        loss = LOSS["ce_weight"] * ce + LOSS["kd_weight"] * sdd.loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self) -> tuple[list[float], list[float]]:
        self.student.train()
        wall, cpu = [], []
        for x, y in self.loader:
            start, start_cpu = time.perf_counter(), time.process_time()
            self.step(x, y)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return wall[1:], cpu[1:]


class HostReadCallback(L.Callback):
    """Counts host reads inside the step window and over the whole training loop (logging included)."""

    def __init__(self) -> None:
        self.step_window, self.loop = HostReadCounter(), HostReadCounter()
        self.steps = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.loop.__enter__()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step_window.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_window.__exit__(None, None, None)
        self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.loop.__exit__(None, None, None)


def count_host_reads(pair: str, setting: str, batch: int, steps: int, tmp: Path) -> list[str]:
    """Host reads per step of the SD-KD step: bare loop, Lightning as timed, Lightning with logger + progress bar."""
    lines = []
    bare = BareRunner(Config(pair, "SD-KD", setting, "bare"), batch, steps)
    counter = HostReadCounter()
    bare.student.train()
    n = 0
    for x, y in bare.loader:
        with counter:
            bare.step(x, y)
        n += 1
    lines.append(_format_counts("bare loop, per step", counter, n))
    for label, extra in (
        ("Lightning as timed (no logger, no progress bar)", {}),
        (
            "Lightning with CSVLogger (log_every_n_steps=1) and the progress bar (refresh every step)",
            dict(
                logger=L.pytorch.loggers.CSVLogger(tmp),
                log_every_n_steps=1,
                enable_progress_bar=True,
                callbacks=[L.pytorch.callbacks.TQDMProgressBar(refresh_rate=1)],
            ),
        ),
    ):
        runner = LightningRunner(Config(pair, "SD-KD", setting, "lightning"), batch, steps)
        callback = HostReadCallback()
        trainer_kwargs = dict(
            accelerator="cpu",
            devices=1,
            precision=runner.precision,
            max_steps=steps + 1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer_kwargs.update(extra)
        trainer_kwargs["callbacks"] = [callback, *extra.get("callbacks", [])]
        L.Trainer(**trainer_kwargs).fit(runner.module, runner.loader)
        lines.append(_format_counts(f"{label}, inside the step window, per step", callback.step_window, callback.steps))
        lines.append(
            _format_counts(
                f"{label}, whole training loop (epoch end included), per step", callback.loop, callback.steps
            )
        )
    return lines


def _format_counts(label: str, counter: HostReadCounter, steps: int) -> str:
    total = sum(counter.counts.values())
    if not total:
        return f"- {label}: 0"
    detail = "; ".join(f"{k}: {v / steps:g}" for k, v in sorted(counter.counts.items(), key=lambda kv: -kv[1]))
    return f"- {label}: {total / steps:g} ({detail})"


def head_and_loss_cost(pair: str, batch: int, repeats: int, channels_last: bool) -> dict[str, Timing]:
    """The part of the step that depends on the scales: both heads, CE + SDD loss, backward into the student map.

    Random post-ReLU feature maps of the pair's real shapes; everything else in the step is the same for KD and
    SD-KD, so the difference of these two timings is the whole extra cost of SD-KD.
    """
    teacher_name, student_name, _ = PAIRS[pair]
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    teacher_map = torch.randn(batch, *FEATURE_MAPS[teacher_name], generator=g).relu().contiguous(memory_format=layout)
    student_map = torch.randn(batch, *FEATURE_MAPS[student_name], generator=g).relu().contiguous(memory_format=layout)
    student_map.requires_grad_(True)
    teacher_classifier = torch.nn.Linear(FEATURE_MAPS[teacher_name][0], CLASSES).requires_grad_(False)
    student_classifier = torch.nn.Linear(FEATURE_MAPS[student_name][0], CLASSES)
    y = torch.randint(0, CLASSES, (batch,), generator=g)

    def work(scales: tuple[int, ...]):
        head = ScaleDecoupledHead(scales)

        def run() -> None:
            student_map.grad = None
            student_classifier.zero_grad(set_to_none=True)
            with torch.no_grad():
                teacher_local = head(teacher_map, teacher_classifier)
            student_local = head(student_map, student_classifier)
            ce = F.cross_entropy(student_local[:, 0], y)
            sdd = ScaleDecoupledLoss(LOSS["loss"])(student_local, teacher_local, y)
            (LOSS["ce_weight"] * ce + LOSS["kd_weight"] * sdd.loss).backward()

        return run

    return interleaved({m: work(scales) for m, scales in METHODS.items()}, repeats=repeats, warmup=5, number=10)


def _ratio(a: Timing | None, b: Timing | None) -> str:
    if a is None or b is None:
        return ""
    return (
        f"{a.median / b.median:.3f} (CPU {a.cpu_median / b.cpu_median:.3f}, min {min(a.samples) / min(b.samples):.3f})"
    )


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=3, warmup=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (alias of --repeats)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--settings", default="baseline,tuned", help=f"comma-separated subset of {list(SETTINGS)}")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated subset of the pairs")
    parser.add_argument("--runners", default="lightning,bare")
    parser.add_argument("--no-host-reads", action="store_true", help="skip counting host reads per step")
    parser.add_argument("--no-parts", action="store_true", help="skip the head+loss and Lightning-overhead probes")
    parser.add_argument("--overhead-steps", type=int, default=20, help="steps per round of the overhead probe")
    args = parser.parse_args()
    setup_threads(args.threads)
    L.seed_everything(0, verbose=False)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    configs = [
        Config(pair, method, setting, runner)
        for pair, setting, method, runner in itertools.product(
            [p.strip() for p in args.pairs.split(",")],
            args.settings.split(","),
            METHODS,
            args.runners.split(","),
        )
    ]
    runners = {
        c: (LightningRunner if c.runner == "lightning" else BareRunner)(c, args.batch, args.steps) for c in configs
    }
    wall: dict[Config, list[float]] = {c: [] for c in configs}
    cpu: dict[Config, list[float]] = {c: [] for c in configs}
    for round_ in range(args.rounds):
        shift = round_ % len(configs)
        for config in configs[shift:] + configs[:shift]:
            w, c = runners[config].run()
            wall[config] += w
            cpu[config] += c
            print(f"round {round_ + 1}/{args.rounds} {config.label}: {1e3 * sum(w) / len(w):.0f} ms/step", flush=True)
    timings = {c: Timing(c.label, wall[c], cpu[c]) for c in configs}

    def get(**kw) -> Timing | None:
        for c, t in timings.items():
            if all(getattr(c, k) == v for k, v in kw.items()):
                return t
        return None

    rows = []
    for c, t in timings.items():
        kd = get(pair=c.pair, method="KD", setting=c.setting, runner=c.runner)
        bare = get(pair=c.pair, method=c.method, setting=c.setting, runner="bare")
        base = get(pair=c.pair, method=c.method, setting="baseline", runner=c.runner)
        rows.append(
            (
                c.pair,
                c.method,
                c.setting,
                c.runner,
                t.ms(),
                f"{t.spread:.0%}",
                f"{t.cpu_median * 1e3:.0f}",
                _ratio(t, kd),
                _ratio(t, bare),
                _ratio(base, t),
            )
        )
    lines = [
        "## One training step (teacher forward + student forward/backward + SGD)",
        "",
        machine_description(),
        "",
        f"B={args.batch}, 32x32, 100 classes; {args.rounds} interleaved rounds x {args.steps} timed steps "
        "(after 1 discarded step per round). Wall ms per step: median [q25-q75] (min-max); spread = IQR / median; "
        "CPU ms: process CPU time per step. Ratios are of wall medians, then in brackets of CPU-time medians and "
        "of wall minima (the least disturbed steps).",
        "",
        markdown_table(
            (
                "pair",
                "method",
                "setting",
                "runner",
                "wall ms",
                "spread",
                "CPU ms",
                "/ KD step",
                "/ bare loop",
                "speed-up vs baseline",
            ),
            rows,
        ),
        "",
        f"Load average at the end: {load_average()}.",
    ]
    if not args.no_parts:
        last = args.settings.split(",")[-1]
        lines += [
            "",
            "### The SD-KD-only part of the step (heads, CE + SDD loss, backward into the student's map; "
            f"layout of the {last!r} setting)",
            "",
        ]
        part_rows = []
        for pair in [p.strip() for p in args.pairs.split(",")]:
            last = args.settings.split(",")[-1]
            cost = head_and_loss_cost(pair, args.batch, repeats=20, channels_last=SETTINGS[last]["channels_last"])
            extra = cost["SD-KD"].median - cost["KD"].median
            step = get(pair=pair, method="KD", setting=args.settings.split(",")[-1], runner="bare") or next(
                iter(timings.values())
            )
            part_rows.append(
                (
                    pair,
                    cost["KD"].ms(),
                    cost["SD-KD"].ms(),
                    f"{extra * 1e3:.2f}",
                    f"{extra / step.median:.2%} of {step.median * 1e3:.0f} ms",
                )
            )
        lines.append(
            markdown_table(
                ("pair", "KD head+loss ms", "SD-KD head+loss ms", "extra ms", "extra / KD step (bare, median)"),
                part_rows,
            )
        )
        probe = next(iter(OVERHEAD_PAIR))
        setting = args.settings.split(",")[-1]
        probe_runners = {
            r: (LightningRunner if r == "lightning" else BareRunner)(
                Config(probe, "SD-KD", setting, r), args.batch, args.overhead_steps
            )
            for r in ("lightning", "bare")
        }
        probe_wall: dict[str, list[float]] = {"lightning": [], "bare": []}
        for _ in range(args.rounds):
            for r, runner in probe_runners.items():
                probe_wall[r] += runner.run()[0]
        probe_t = {r: Timing(r, w) for r, w in probe_wall.items()}
        overhead = probe_t["lightning"].median - probe_t["bare"].median
        lines += [
            "",
            f"### Lightning's own cost per step ({probe}, SD-KD, {setting}, B={args.batch}, "
            f"{args.rounds} x {args.overhead_steps} steps)",
            "",
            markdown_table(
                ("runner", "wall ms"),
                [(r, t.ms()) for r, t in probe_t.items()],
            ),
            "",
            f"Lightning - bare: {overhead * 1e3:.2f} ms per step (medians).",
        ]
    if not args.no_host_reads:
        setting = "tuned" if "tuned" in args.settings.split(",") else args.settings.split(",")[0]
        pair = args.pairs.split(",")[0].strip()
        with tempfile.TemporaryDirectory() as tmp:
            counts = count_host_reads(pair, setting, args.batch, 2, Path(tmp))
        lines += [
            "",
            f"Host reads (values copied to Python: `.item()`, `bool(tensor)`, data-dependent shapes; each one a "
            f"synchronisation on a GPU) per SD-KD step, {pair}, {setting}, counted with a TorchDispatchMode:",
            "",
            *counts,
        ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
