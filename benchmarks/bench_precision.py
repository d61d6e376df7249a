"""Benchmark: precision and memory layout on this CPU, per part of the distillation step.

Usage::

    .venv/bin/python benchmarks/bench_precision.py [--repeats 7] [--batch 64] [--no-compile] [--out report.md]

Parts, each timed separately (ResNet32x4 teacher, ResNet8x4 and ShuffleV1 students, 32x32 input, 100
classes):

1. The frozen teacher's forward: fp32, contiguous vs channels_last, BatchNorm folded into the convolutions
   (``sdd_lightning.models.fold_bn.fold_batchnorm``) or not, ``torch.no_grad`` vs ``torch.inference_mode``
   (plus the ``.clone()`` that would take the logits out of inference mode), and ``torch.compile`` of the
   best eager variant (its compile time reported).
2. The student's forward + backward (the head's local logits, a scalar loss on them): contiguous vs
   channels_last, and ``torch.compile``.
3. bf16 autocast against fp32 for both parts. On a CPU without native bf16 (no AVX512-BF16 / AMX) oneDNN
   falls back to slow kernels; there the bf16 comparison runs at ``--bf16-batch`` (default 8) for fp32 and
   bf16 alike, so that it finishes, and its ratio is what counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
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
from sdd_lightning.models import build_model
from sdd_lightning.models.fold_bn import fold_batchnorm

SCALES = (1, 2, 4)
CLASSES = 100


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic that oneDNN uses (AVX512-BF16 or AMX)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def _layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def make_teacher(*, folded: bool, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    teacher = build_model("resnet32x4", num_classes=CLASSES).eval().requires_grad_(False)
    if folded:
        fold_batchnorm(teacher)
    return teacher.to(memory_format=_layout(channels_last))


def make_student(name: str, *, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(name, num_classes=CLASSES).train().to(memory_format=_layout(channels_last))


def teacher_forward(
    teacher: torch.nn.Module, x: torch.Tensor, *, inference: bool = False, bf16: bool = False, clone: bool = False
) -> Callable[[], torch.Tensor]:
    head = ScaleDecoupledHead(SCALES)
    features = teacher.forward_features
    classifier = teacher.get_classifier()

    def run() -> torch.Tensor:
        with (
            torch.inference_mode() if inference else torch.no_grad(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
        ):
            out = head(features(x), classifier)
        return out.clone() if clone else out

    return run


def student_forward_backward(
    student: torch.nn.Module, x: torch.Tensor, *, bf16: bool = False, forward_features=None
) -> Callable[[], None]:
    head = ScaleDecoupledHead(SCALES)
    features = forward_features or student.forward_features
    classifier = student.get_classifier()

    def run() -> None:
        for p in student.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            local = head(features(x), classifier)
        local.float().logsumexp(-1).mean().backward()

    return run


def _images(batch: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=_layout(channels_last))


def _compiled(fn_builder: Callable[[], Callable[[], object]]) -> tuple[Callable[[], object], float]:
    """Builds a variant with ``torch.compile`` inside, runs it once and returns it with its compile time."""
    start = time.perf_counter()
    fn = fn_builder()
    fn()
    fn()
    return fn, time.perf_counter() - start


def _rows(part: str, timings: dict[str, Timing], baseline: str, notes: dict[str, str] | None = None) -> list:
    base = timings[baseline].median
    notes = notes or {}
    return [
        (
            part,
            name,
            t.ms(),
            f"{t.spread:.0%}",
            f"{t.cpu_median * 1e3:.0f}",
            f"{base / t.median:.2f}x",
            f"{timings[baseline].cpu_median / t.cpu_median:.2f}x",
            notes.get(name, ""),
        )
        for name, t in timings.items()
    ]


def bench_teacher(batch: int, repeats: int, warmup: int, compile_: bool) -> list:
    variants: dict[str, Callable[[], object]] = {}
    notes: dict[str, str] = {}
    for channels_last in (False, True):
        x = _images(batch, channels_last)
        layout = "channels_last" if channels_last else "contiguous"
        for folded in (False, True):
            teacher = make_teacher(folded=folded, channels_last=channels_last)
            name = f"fp32, {layout}, {'BN folded' if folded else 'BN'}, no_grad"
            variants[name] = teacher_forward(teacher, x)
            if folded and channels_last:
                variants[f"fp32, {layout}, BN folded, inference_mode"] = teacher_forward(teacher, x, inference=True)
                variants[f"fp32, {layout}, BN folded, inference_mode + clone"] = teacher_forward(
                    teacher, x, inference=True, clone=True
                )
                if compile_:

                    def build(teacher=teacher, x=x):
                        compiled = torch.compile(teacher.forward_features)
                        head, classifier = ScaleDecoupledHead(SCALES), teacher.get_classifier()

                        def run():
                            with torch.no_grad():
                                return head(compiled(x), classifier)

                        return run

                    name = f"fp32, {layout}, BN folded, no_grad, torch.compile"
                    variants[name], seconds = _compiled(build)
                    notes[name] = f"compile {seconds:.0f} s"
    timings = interleaved(variants, repeats=repeats, warmup=warmup)
    return _rows("teacher forward (ResNet32x4)", timings, "fp32, contiguous, BN, no_grad", notes)


def bench_student(name: str, batch: int, repeats: int, warmup: int, compile_: bool) -> list:
    variants: dict[str, Callable[[], object]] = {}
    notes: dict[str, str] = {}
    for channels_last in (False, True):
        x = _images(batch, channels_last)
        layout = "channels_last" if channels_last else "contiguous"
        student = make_student(name, channels_last=channels_last)
        variants[f"fp32, {layout}"] = student_forward_backward(student, x)
        if compile_ and channels_last:

            def build(student=student, x=x):
                return student_forward_backward(student, x, forward_features=torch.compile(student.forward_features))

            label = f"fp32, {layout}, torch.compile"
            variants[label], seconds = _compiled(build)
            notes[label] = f"compile {seconds:.0f} s"
    timings = interleaved(variants, repeats=repeats, warmup=warmup)
    return _rows(f"student forward+backward ({name})", timings, "fp32, contiguous", notes)


def bench_bf16(batch: int, repeats: int) -> list:
    variants: dict[str, Callable[[], object]] = {}
    for channels_last in (False, True):
        x = _images(batch, channels_last)
        layout = "channels_last" if channels_last else "contiguous"
        teacher = make_teacher(folded=True, channels_last=channels_last)
        student = make_student("resnet8x4", channels_last=channels_last)
        for bf16 in (False, True):
            precision = "bf16 autocast" if bf16 else "fp32"
            variants[f"teacher fwd, {precision}, {layout}"] = teacher_forward(teacher, x, bf16=bf16)
            variants[f"student fwd+bwd, {precision}, {layout}"] = student_forward_backward(student, x, bf16=bf16)
    timings = interleaved(variants, repeats=repeats, warmup=1)
    rows = []
    for name, t in timings.items():
        fp32 = timings[name.replace("bf16 autocast", "fp32")].median
        fp32_cpu = timings[name.replace("bf16 autocast", "fp32")].cpu_median
        rows.append(
            (
                f"bf16 check (B={batch})",
                name,
                t.ms(),
                f"{t.spread:.0%}",
                f"{t.cpu_median * 1e3:.0f}",
                f"{fp32 / t.median:.2f}x",
                f"{fp32_cpu / t.cpu_median:.2f}x",
                "",
            )
        )
    return rows


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=7, warmup=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--bf16-batch", type=int, default=None, help="batch of the bf16 check (default: see doc)")
    parser.add_argument("--bf16-repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--parts", default="teacher,students,bf16", help="comma-separated subset to run")
    args = parser.parse_args()
    setup_threads(args.threads)
    parts = set(args.parts.split(","))
    bf16_batch = args.bf16_batch or (args.batch if native_bf16() else 8)
    lines = ["## Precision and layout on this CPU", "", machine_description(), ""]
    lines.append(f"Native bf16 arithmetic on this CPU: {'yes' if native_bf16() else 'no (no AVX512-BF16, no AMX)'}.")
    rows: list = []
    if "teacher" in parts:
        rows += bench_teacher(args.batch, args.repeats, args.warmup, not args.no_compile)
    if "students" in parts:
        for name in ("resnet8x4", "ShuffleV1"):
            rows += bench_student(name, args.batch, args.repeats, args.warmup, not args.no_compile)
    if "bf16" in parts:
        rows += bench_bf16(bf16_batch, args.bf16_repeats)
    lines += [
        "",
        f"B={args.batch} (bf16 check: B={bf16_batch}), {args.repeats} interleaved rounds ({args.bf16_repeats} for the "
        "bf16 check); ms per call: median [q25-q75] (min-max); spread = IQR / median; speed-up against the "
        "first row of each part (bf16 check: against the same layout in fp32). CPU ms: process CPU time per call "
        "(both threads), less sensitive to other processes on the cores.",
        "",
        markdown_table(
            ("part", "variant", "wall ms", "spread", "CPU ms", "speed-up (wall)", "speed-up (CPU)", "note"), rows
        ),
    ]
    lines += ["", f"Load average at the end: {load_average()}."]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
