"""Benchmark: inference forward time of the CIFAR networks used in SDD's main pairs, on this machine.

Usage::

    .venv/bin/python benchmarks/bench_models.py [--repeats 20] [--warmup 3] [--threads 2] [--batch 64] [--out report.md]

A batch of 64 random 32x32 images (the official CIFAR-100 batch size) goes through ``resnet8x4``,
``resnet32x4`` and ``ShuffleV1`` (100 classes; eval mode, ``torch.no_grad``). The networks are timed
interleaved (one call of each per round, rotated), after untimed warm-up calls; the table gives the median
and the spread over rounds, plus the images per second at the median. The line above the table says which
CPU, torch version and thread count produced the numbers, and the load average when the run started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sdd_lightning.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    add_common_args,
    interleaved,
    machine_description,
    markdown_table,
    setup_threads,
    write_report,
)

NETWORKS = ("resnet8x4", "resnet32x4", "ShuffleV1")


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=20, warmup=3)
    parser.add_argument("--batch", type=int, default=64, help="images per forward (default 64)")
    args = parser.parse_args()
    setup_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32)
    models = {name: build_model(name, 100).eval() for name in NETWORKS}

    def forward(model: torch.nn.Module):
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(images)

        return run

    timings = interleaved(
        {name: forward(model) for name, model in models.items()}, repeats=args.repeats, warmup=args.warmup
    )
    rows = []
    for name, timing in timings.items():
        params = sum(p.numel() for p in models[name].parameters())
        rows.append([name, f"{params:,}", timing.ms(), f"{timing.spread:.0%}", f"{args.batch / timing.median:,.0f}"])
    lines = [
        f"## Forward time, batch {args.batch} at 32x32, eval mode, no_grad",
        "",
        machine_description(),
        "",
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up calls each; ms per forward: "
        "median [25th-75th percentile] (min-max); spread = interquartile range / median.",
        "",
        markdown_table(["network", "parameters", "ms per batch", "spread", "images/s"], rows),
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
