"""Benchmark for a CUDA card: distillation training steps per second, and the fraction of the card's bf16 peak.

Usage::

    python benchmarks/gpu_step.py --out gpu_step.md                       # on a CUDA machine
    python benchmarks/gpu_step.py --device cpu --steps 3 --batch 4 \\
        --compile-backend eager                                          # CPU smoke test of every code path

For every teacher -> student pair, method (KD = scales (1,), SD-KD = scales (1, 2, 4)) and mode it runs the
step of ``DistillationModule`` (its teacher/student local logits and ``compute_loss``, the library's code) in a
plain loop with SGD, on a device-resident random CIFAR-shaped uint8 data set whose random crop (padding 4)
and horizontal flip run on the device, so that no host work or host synchronisation sits in the loop. Modes:

- ``fp32``: fp32, contiguous, the teacher as loaded (what Lightning's ``precision="32-true"`` runs; note that
  cuDNN convolutions use TF32 by default on Ampere and later, which this script reports).
- ``bf16-cl``: bf16 autocast (Lightning ``precision="bf16-mixed"``), channels_last, teacher BatchNorm folded.
- ``bf16-cl-compile``: the same with the forward and loss compiled by ``torch.compile`` (compile time reported).

FLOPs per image are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode``: the
teacher's forward plus three times the student's forward (forward + backward; see ``flops_per_image``), i.e.
convolutions and matrix products, what tensor cores run; the fraction of peak is achieved FLOP/s over the
card's dense bf16 peak (``--peak-tflops``, or looked up from the card's name: H100 SXM 989, H100 PCIe 756,
H100 NVL 835, H200 989, A100 312, L40S 362, L4 121). The result is a markdown table, printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_description, markdown_table, write_report

from sdd_lightning.data.transforms import CIFAR100_MEAN as CIFAR_MEAN
from sdd_lightning.data.transforms import CIFAR100_STD as CIFAR_STD
from sdd_lightning.method.losses import KDLoss
from sdd_lightning.models import build_model
from sdd_lightning.training.module import DistillationModule

CLASSES = 100
PAIRS = {
    "ResNet32x4 -> ResNet8x4": ("resnet32x4", "resnet8x4", 0.05),
    "ResNet32x4 -> ShuffleV1": ("resnet32x4", "ShuffleV1", 0.01),
}
METHODS = {"KD": (1,), "SD-KD": (1, 2, 4)}
MODES = {
    "fp32": dict(bf16=False, channels_last=False, fold=False, compile=False),
    "bf16-cl": dict(bf16=True, channels_last=True, fold=True, compile=False),
    "bf16-cl-compile": dict(bf16=True, channels_last=True, fold=True, compile=True),
}
# Dense bf16 tensor-core peaks in TFLOP/s, matched against torch.cuda.get_device_name() in this order.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def lookup_peak(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


class DeviceCifar:
    """Random CIFAR-shaped uint8 images and labels held on the device; batches are augmented there too."""

    def __init__(self, size: int, device: torch.device, *, seed: int = 0) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.images = torch.randint(
            0, 256, (size, 3, 32, 32), dtype=torch.uint8, device=device, generator=self.generator
        )
        self.labels = torch.randint(0, CLASSES, (size,), device=device, generator=self.generator)
        self.mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255
        self.offsets = torch.arange(32, device=device)

    def batch(self, batch_size: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """RandomCrop(32, padding=4) + RandomHorizontalFlip + normalisation, without leaving the device."""
        g, device = self.generator, self.images.device
        index = torch.randint(0, self.images.shape[0], (batch_size,), device=device, generator=g)
        padded = torch.nn.functional.pad(self.images[index], (4, 4, 4, 4))
        top = torch.randint(0, 9, (batch_size, 1), device=device, generator=g) + self.offsets
        left = torch.randint(0, 9, (batch_size, 1), device=device, generator=g) + self.offsets
        flip = torch.rand(batch_size, 1, device=device, generator=g) < 0.5
        left = torch.where(flip, left.flip(1), left)
        rows = top.view(batch_size, 1, 32, 1)
        cols = left.view(batch_size, 1, 1, 32)
        samples = torch.arange(batch_size, device=device).view(batch_size, 1, 1, 1)
        channels = torch.arange(3, device=device).view(1, 3, 1, 1)
        x = (padded[samples, channels, rows, cols].float() - self.mean) / self.std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[index]


def build(pair: str, method: str, mode: dict, device: torch.device) -> tuple[DistillationModule, torch.optim.Optimizer]:
    teacher_name, student_name, lr = PAIRS[pair]
    torch.manual_seed(0)
    module = DistillationModule(
        build_model(student_name, num_classes=CLASSES),
        build_model(teacher_name, num_classes=CLASSES),
        num_classes=CLASSES,
        scales=METHODS[method],
        loss=KDLoss(temperature=4.0),
        ce_weight=0.1,
        kd_weight=0.9,
        channels_last=mode["channels_last"],
        fold_teacher_bn=mode["fold"],
    ).to(device)
    if mode["channels_last"]:
        module.to(memory_format=torch.channels_last)
    module.train()
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    return module, optimizer


def forward_loss(module: DistillationModule, x: torch.Tensor, y: torch.Tensor, *, bf16: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, teacher_local = module.teacher_logits(x)
        student_global, student_local = module.student_logits(x)
    loss, _ = module.compute_loss(student_global, student_local, teacher_local, y)
    return loss


def flops_per_image(module: DistillationModule, data: DeviceCifar, batch: int, channels_last: bool) -> float:
    """Teacher forward + student forward and backward, per image.

    Both forwards are counted with ``FlopCounterMode``; the student's backward is counted as twice its forward
    (the input and weight gradients of every convolution and matrix product), because ``FlopCounterMode``
    overcounts the backward of grouped convolutions (torch 2.14: a depthwise 3x3 convolution's backward is
    counted 61x its forward instead of 2x), which would inflate ShuffleNet's count about sevenfold.
    """
    x, _ = data.batch(batch, channels_last)
    with torch.no_grad():
        with FlopCounterMode(display=False) as teacher:
            module.teacher_logits(x)
        with FlopCounterMode(display=False) as student:
            module.student_logits(x)
    return (teacher.get_total_flops() + 3 * student.get_total_flops()) / batch


def run_config(args, pair: str, method: str, mode_name: str, device: torch.device, data: DeviceCifar) -> dict:
    mode = MODES[mode_name]
    module, optimizer = build(pair, method, mode, device)
    flops = flops_per_image(module, data, args.batch, mode["channels_last"])
    loss_fn = partial(forward_loss, module, bf16=mode["bf16"])
    compile_seconds = None
    if mode["compile"]:
        loss_fn = torch.compile(loss_fn, backend=args.compile_backend)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> torch.Tensor:
        x, y = data.batch(args.batch, mode["channels_last"])
        loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_seconds = time.perf_counter() - start
    if mode["compile"]:
        compile_seconds = warmup_seconds
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{pair} {method} {mode_name}: the loss is not finite")
    seconds = sorted(times)[len(times) // 2] / args.steps
    images_per_second = args.batch / seconds
    return dict(
        pair=pair,
        method=method,
        mode=mode_name,
        ms=seconds * 1e3,
        spread=(max(times) - min(times)) / sorted(times)[len(times) // 2],
        images_per_second=images_per_second,
        gflops_per_image=flops / 1e9,
        tflops=flops * images_per_second / 1e12,
        compile_seconds=compile_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (includes compilation)")
    parser.add_argument("--dataset-size", type=int, default=50_000)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: smoke test)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card in TFLOP/s")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --device cpu for the smoke test")
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({device})"
    peak = args.peak_tflops or (lookup_peak(card) if device.type == "cuda" else None)
    if args.dataset_size < args.batch:
        args.dataset_size = args.batch
    data = DeviceCifar(args.dataset_size, device)

    rows = []
    combos = itertools.product(args.pairs.split(","), args.methods.split(","), args.modes.split(","))
    for pair, method, mode in combos:
        result = run_config(args, pair.strip(), method.strip(), mode.strip(), device, data)
        print(f"{pair} | {method} | {mode}: {result['images_per_second']:.0f} img/s", flush=True)
        rows.append(result)

    def fraction(r: dict) -> str:
        return f"{r['tflops'] / peak:.1%}" if peak else "n/a"

    baseline = {(r["pair"], r["method"]): r["images_per_second"] for r in rows if r["mode"] == "fp32"}
    table = markdown_table(
        (
            "pair",
            "method",
            "mode",
            "ms/step",
            "spread",
            "images/s",
            "vs fp32",
            "GFLOP/image",
            "TFLOP/s",
            "of bf16 peak",
            "compile+warm-up s",
        ),
        [
            (
                r["pair"],
                r["method"],
                r["mode"],
                f"{r['ms']:.2f}",
                f"{r['spread']:.0%}",
                f"{r['images_per_second']:.0f}",
                f"{r['images_per_second'] / baseline[(r['pair'], r['method'])]:.2f}x"
                if (r["pair"], r["method"]) in baseline
                else "",
                f"{r['gflops_per_image']:.2f}",
                f"{r['tflops']:.2f}",
                fraction(r),
                f"{r['compile_seconds']:.0f}" if r["compile_seconds"] is not None else "",
            )
            for r in rows
        ],
    )
    tf32 = torch.backends.cudnn.allow_tf32 if device.type == "cuda" else False
    lines = [
        f"## Distillation training step on {card}",
        "",
        machine_description(),
        "",
        f"B={args.batch}, {args.repeats} repeats x {args.steps} steps after {args.warmup} warm-up steps "
        f"(spread = (max - min) / median over repeats); bf16 peak {peak if peak else 'unknown'} TFLOP/s; "
        f"cuDNN TF32 for fp32 convolutions: {tf32}; torch.compile backend {args.compile_backend}.",
        "",
        table,
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
