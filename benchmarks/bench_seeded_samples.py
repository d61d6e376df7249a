"""Benchmark: what seeding every sample's augmentation costs (the exact mid-epoch resume of the standard loader).

Usage::

    .venv/bin/python benchmarks/bench_seeded_samples.py [--samples 2000] [--repeats 7] [--threads 1]

The standard training loader makes each sample with the torch generator seeded by ``(seed, epoch, index)``
(``sdd_lightning.data.SeededSamples``) so that a resumed run augments every image as an unbroken run does.
This times one worker's per-sample work with and without that seeding:

- CIFAR: a 32x32 ``uint8`` image through the CIFAR training transform (pad-4 random crop, flip, normalise);
- ImageNet-size: a 375x500 ``uint8`` image through the ImageNet training transform (RandomResizedCrop 224,
  flip, normalise); decoding the JPEG, which a real ImageNet sample also pays, is not included;
- the seeding alone: a data set whose samples cost nothing.

Rounds interleave the variants; the table reports the median over rounds (microseconds per sample).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, interleaved, machine_description, markdown_table, setup_threads, write_report

from sdd_lightning.data import SeededSamples, TensorImageDataset
from sdd_lightning.data.transforms import cifar_train_transform, imagenet_train_transform


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=7, warmup=1)
    parser.add_argument("--samples", type=int, default=2000, help="samples per timed call")
    parser.set_defaults(threads=1)  # a DataLoader worker runs one thread
    args = parser.parse_args()
    setup_threads(args.threads)
    header = machine_description()

    generator = torch.Generator().manual_seed(0)
    sets = {
        "CIFAR 32x32": TensorImageDataset(
            torch.randint(0, 256, (args.samples, 3, 32, 32), dtype=torch.uint8, generator=generator),
            torch.zeros(args.samples, dtype=torch.long),
            cifar_train_transform(),
        ),
        "ImageNet-size 375x500": TensorImageDataset(
            torch.randint(0, 256, (64, 3, 375, 500), dtype=torch.uint8, generator=generator),
            torch.zeros(64, dtype=torch.long),
            imagenet_train_transform(),
        ),
    }
    variants, counts = {}, {}
    nothing = TensorImageDataset(torch.zeros(args.samples, 1, 1, 1, dtype=torch.uint8), torch.zeros(args.samples), None)
    sets["nothing (seeding alone)"] = nothing
    for name, dataset in sets.items():
        seeded = SeededSamples(dataset, seed=0)
        count = len(dataset)
        counts[name] = count
        variants[f"{name}, plain"] = lambda dataset=dataset, count=count: [dataset[i] for i in range(count)]
        variants[f"{name}, seeded"] = lambda seeded=seeded, count=count: [seeded[(3, i)] for i in range(count)]
    timings = interleaved(variants, repeats=args.repeats, warmup=args.warmup)

    rows = []
    for name, count in counts.items():
        plain, seeded = timings[f"{name}, plain"], timings[f"{name}, seeded"]
        rows.append(
            (
                name,
                f"{plain.median / count * 1e6:.1f}",
                f"{seeded.median / count * 1e6:.1f}",
                f"{(seeded.median - plain.median) / count * 1e6:+.1f}",
                f"{seeded.median / plain.median - 1:+.1%}",
                f"{plain.spread:.0%} / {seeded.spread:.0%}",
            )
        )
    lines = [
        "## Per-sample augmentation seeds (standard training loader)",
        "",
        header,
        "",
        f"Median of {args.repeats} interleaved rounds; microseconds per sample; spread = IQR / median.",
        "",
        markdown_table(("sample", "plain (us)", "seeded (us)", "cost (us)", "cost", "spread"), rows),
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
