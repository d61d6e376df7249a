"""Benchmark: images per second of the CIFAR-100 training pipeline, DataLoader workers vs device-resident.

Usage::

    .venv/bin/python benchmarks/bench_data.py [--root ../shared/data] [--max-batches 150] [--repeats 5]

Measures the data side of one training epoch only (no model): every pipeline yields normalised
``float32`` batches of ``--batch-size`` augmented images (random crop 32 with padding 4, horizontal flip).

- ``DataLoader, N workers``: ``Cifar100DataModule`` as configured by default: per-sample torchvision
  transforms in ``N`` worker processes (persistent; their start-up is excluded by the warm-up round).
- ``device-resident (CPU)``: ``Cifar100DataModule(device_resident=True)`` with the device being the
  CPU: index gather, vectorised crop/flip and normalisation in the main process, no workers. On a GPU
  the same code runs on the device.

Each sample times ``--max-batches`` batches (a full epoch is 782 batches of 64; the default times a
prefix to keep rounds short, as printed), rounds interleave the pipelines, and the table reports the
median over rounds. It also times the generation of the built-in shapes set (10,000 images).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine_description, markdown_table, setup_threads, write_report

from sdd_lightning.data import Cifar100DataModule, generate_shapes

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def consume(loader, max_batches: int) -> int:
    """Iterate ``max_batches`` batches (one partial epoch); returns the number of images."""
    images = 0
    for x, _ in itertools.islice(loader, max_batches):
        images += x.shape[0]
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding cifar-100-python/")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader worker counts to time")
    parser.add_argument("--max-batches", type=int, default=150, help="batches per sample (782 = a full epoch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per pipeline")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the main process")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args()
    setup_threads(args.threads)
    header = machine_description()

    loaders = {}
    for workers in args.workers:
        dm = Cifar100DataModule(args.root, batch_size=args.batch_size, num_workers=workers, persistent_workers=True)
        dm.setup("fit")
        loaders[f"DataLoader, {workers} workers"] = dm.train_dataloader()
    dm = Cifar100DataModule(args.root, batch_size=args.batch_size, device_resident=True)
    dm.setup("fit")
    loaders["device-resident (CPU)"] = dm.train_dataloader()
    epoch_batches = len(loaders["device-resident (CPU)"])
    max_batches = min(args.max_batches, epoch_batches)

    variants = {name: (lambda loader=loader: consume(loader, max_batches)) for name, loader in loaders.items()}
    timings = interleaved(variants, repeats=args.repeats, warmup=1)
    images = max_batches * args.batch_size
    rows = [
        (
            name,
            f"{images / t.median:,.0f}",
            f"{t.median:.2f}",
            f"{t.spread:.0%}",
            f"{t.median * epoch_batches / max_batches:.1f}",
        )
        for name, t in timings.items()
    ]

    start = time.perf_counter()
    generate_shapes(10_000)
    generation = time.perf_counter() - start

    scope = "a full epoch" if max_batches == epoch_batches else f"the first {max_batches} of {epoch_batches} batches"
    lines = [
        "## CIFAR-100 training data pipeline (no model)",
        "",
        header,
        "",
        f"Batch size {args.batch_size}; each sample times {scope} ({images:,} images); median of {args.repeats} "
        "interleaved rounds after one warm-up round; spread = IQR / median.",
        "",
        markdown_table(("pipeline", "images/s", "s per sample", "spread", "s per epoch (extrapolated)"), rows),
        "",
        f"Shapes set: generate_shapes(10,000) took {generation:.2f} s ({torch.get_num_threads()} threads).",
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
