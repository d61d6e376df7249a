"""Benchmark: ``sdd_loss`` forward+backward against references written the way the official code works.

Usage::

    .venv/bin/python benchmarks/bench_loss.py [--repeats 30] [--threads 2] [--out report.md]

Shapes (B, R, K) = (64, 21, 100) (CIFAR-100, scales 1,2,4) and (256, 21, 1000) (ImageNet-sized). Three
ways to compute the same number, each timed as forward + backward into the student's local logits:

- ``sdd_loss``: the library (one base-loss call on the (B*R, K) rows, a weight tensor from ``torch.where``,
  no boolean indexing, no host synchronisation).
- ``official-style, region loop``: per-region loss rows computed region by region in a Python loop, the
  official code's elementwise NaN guard (a boolean index-put), boolean masks for the four
  teacher-correctness cases (global right/region right, ...), weights 1 or 2 written through those masks,
  the sum divided by R*B, and the official ``if isnan(loss) or isinf(loss)`` check on the host.
- ``official-style, batched``: the same, but the KL of all regions in one call on the region-major
  (R*B, K) reshape, which is what the official ``sdd_kd_loss`` actually does (it loops over scales only in
  the network's pooling, not in the loss).

Before timing, the script checks that all three give the same loss and the same gradient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    add_common_args,
    calibrate,
    interleaved,
    load_average,
    machine_description,
    markdown_table,
    setup_threads,
    write_report,
)

from sdd_lightning.method.losses import KDLoss, ScaleDecoupledLoss, sdd_loss

SHAPES = ((64, 21, 100), (256, 21, 1000))
TEMPERATURE = 4.0
BETA = 2.0


def official_style_loss(
    student_local: torch.Tensor,
    teacher_local: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    complementary_weight: float = BETA,
    loop_regions: bool = True,
) -> torch.Tensor:
    """SD-KD computed the way the official code does (written anew here from its description).

    Rows are region-major (all samples of region 0, then region 1, ...), as after the official
    ``permute(2, 0, 1)`` + reshape of its (B, K, R) local logits.
    """
    batch, regions, classes = student_local.shape
    t = temperature
    if loop_regions:
        rows = []
        for r in range(regions):
            log_p_s = F.log_softmax(student_local[:, r] / t, dim=1)
            p_t = F.softmax(teacher_local[:, r] / t, dim=1)
            rows.append(F.kl_div(log_p_s, p_t, reduction="none") * t**2)
        elementwise = torch.cat(rows)
    else:
        s = student_local.transpose(0, 1).reshape(regions * batch, classes)
        tt = teacher_local.transpose(0, 1).reshape(regions * batch, classes)
        elementwise = F.kl_div(F.log_softmax(s / t, dim=1), F.softmax(tt / t, dim=1), reduction="none") * t**2
    elementwise[torch.isnan(elementwise)] = 0.0  # the official NaN guard
    per_row = elementwise.sum(1)

    teacher_prediction = teacher_local.detach().transpose(0, 1).reshape(regions * batch, classes).argmax(1)
    target_rows = target.repeat(regions)
    region_right = teacher_prediction == target_rows
    global_right = (teacher_prediction[:batch] == target).repeat(regions)
    local = torch.ones_like(region_right)
    local[:batch] = False
    both_right = global_right & region_right
    both_wrong = ~global_right & ~region_right
    global_right_region_wrong = global_right & ~region_right & local
    global_wrong_region_right = ~global_right & region_right & local
    weights = torch.zeros_like(per_row)
    weights[both_right] = 1.0
    weights[both_wrong] = 1.0
    weights[global_right_region_wrong] = complementary_weight
    weights[global_wrong_region_right] = complementary_weight
    loss = (per_row * weights).sum() / (regions * batch)
    if torch.isnan(loss) or torch.isinf(loss):  # the official host-side check
        loss = torch.zeros((), dtype=loss.dtype)
    return loss


def make_inputs(batch: int, regions: int, classes: int, *, dtype=torch.float32, seed: int = 0):
    """Student and teacher local logits and targets; the teacher is right about half the time."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (batch,), generator=g)
    teacher = torch.randn(batch, regions, classes, generator=g, dtype=dtype) * 2.0
    teacher += (
        5.0 * F.one_hot(target, classes).to(dtype).unsqueeze(1) * (torch.rand(batch, regions, 1, generator=g) < 0.5)
    )
    student = (torch.randn(batch, regions, classes, generator=g, dtype=dtype) * 2.0).requires_grad_(True)
    return student, teacher, target


def _forward_backward(loss_fn, student, teacher, target):
    def run() -> None:
        student.grad = None
        loss_fn(student, teacher, target).backward()

    return run


VARIANTS = {
    "sdd_loss (library)": lambda s, t, y: sdd_loss(s, t, y, temperature=TEMPERATURE, complementary_weight=BETA),
    "ScaleDecoupledLoss (+ fraction, as the module)": lambda s, t, y: (
        ScaleDecoupledLoss(KDLoss(temperature=TEMPERATURE), complementary_weight=BETA)(s, t, y).loss
    ),
    "official-style, region loop": lambda s, t, y: official_style_loss(s, t, y, loop_regions=True),
    "official-style, batched": lambda s, t, y: official_style_loss(s, t, y, loop_regions=False),
}


def check_agreement(batch: int, regions: int, classes: int) -> str:
    """Asserts that all variants agree in value and gradient (fp64 tightly, fp32 to float precision)."""
    notes = []
    for dtype, rtol, atol in ((torch.float64, 1e-10, 1e-12), (torch.float32, 2e-5, 1e-7)):
        student, teacher, target = make_inputs(batch, regions, classes, dtype=dtype)
        results = {}
        for name, fn in VARIANTS.items():
            student.grad = None
            loss = fn(student, teacher, target)
            loss.backward()
            results[name] = (loss.detach().clone(), student.grad.clone())
        ref_loss, ref_grad = results["official-style, region loop"]
        worst = 0.0
        for name, (loss, grad) in results.items():
            torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol, msg=f"{name} loss ({dtype})")
            torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol, msg=f"{name} gradient ({dtype})")
            worst = max(worst, abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()))
        notes.append(
            f"{str(dtype).removeprefix('torch.')}: loss {ref_loss.item():.6f}, worst relative diff {worst:.1e}"
        )
    return "; ".join(notes)


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=30, warmup=5)
    args = parser.parse_args()
    setup_threads(args.threads)
    lines = ["## sdd_loss forward+backward", "", machine_description(), ""]
    rows = []
    for batch, regions, classes in SHAPES:
        agreement = check_agreement(batch, regions, classes)
        student, teacher, target = make_inputs(batch, regions, classes)
        fns = {name: _forward_backward(fn, student, teacher, target) for name, fn in VARIANTS.items()}
        number = calibrate(fns["sdd_loss (library)"], target_seconds=0.03)
        timings = interleaved(fns, repeats=args.repeats, warmup=args.warmup, number=number)
        ref = timings["official-style, region loop"].median
        batched = timings["official-style, batched"].median
        for name, timing in timings.items():
            rows.append(
                (
                    f"({batch}, {regions}, {classes})",
                    name,
                    timing.ms(),
                    f"{timing.spread:.0%}",
                    f"{timing.cpu_median * 1e3:.2f}",
                    f"{ref / timing.median:.2f}x",
                    f"{batched / timing.median:.2f}x",
                )
            )
        lines.append(f"- ({batch}, {regions}, {classes}) agreement: {agreement}; {number} calls per sample")
    lines += [
        "",
        f"{args.repeats} interleaved rounds per variant; times in ms per forward+backward: "
        "median [q25-q75] (min-max); spread = IQR / median.",
        "",
        markdown_table(
            (
                "(B, R, K)",
                "implementation",
                "wall ms",
                "spread",
                "CPU ms",
                "speed-up vs region loop",
                "speed-up vs batched",
            ),
            rows,
        ),
    ]
    lines += ["", f"Load average at the end: {load_average()}."]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
