"""Benchmark: the teacher view cache (``teacher.cache_dir``): step time, hit rates, disk size, float16 effect.

Usage::

    .venv/bin/python benchmarks/bench_teacher_cache.py [--repeats 5] [--sim-images 10000] [--out report.md]
    python3 benchmarks/bench_teacher_cache.py --device cuda --repeats 3 --sim-images 1000 --epochs 10   # GPU lease

- Step time, in one process, interleaved: one SD-KD training step of ResNet32x4 -> ResNet8x4 at batch 64
  (random 32x32 images, 100 classes, M = {1, 2}, the official scale set of this pair) with the teacher run
  live (``no cache``), read from a warm cache (every entry stored), on a cold cache (every entry missing:
  the teacher runs and the entries are written), and at a 50% hit rate two ways: the teacher on the missing
  half only (what ``DistillationModule`` does) or on the whole batch. Ratios to ``no cache`` are the result.
- Hit rates: the exact views the device-resident CIFAR pipeline draws (its seeded order and crop/flip draws,
  without the images or any training) for a first, second and third run with other seeds on one cache, over
  ``--epochs`` epochs; next to the expectation ``1 - 162 (1 - (1 - 1/162)^E) / E`` for a first run.
- Disk: the full size of a cache for CIFAR-100 per scale set and dtype (the file is sparse: a run uses what it
  fills).
- float16 entries: the largest rounding of the teacher's logits and the change of the SD-KD loss it causes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    add_common_args,
    interleaved,
    load_average,
    machine_description,
    markdown_table,
    setup_threads,
    write_report,
)

from sdd_lightning.data.gpu_augment import draw_crop_flip
from sdd_lightning.data.resumable import EpochSampler
from sdd_lightning.data.seeding import derive_seed
from sdd_lightning.data.views import ViewSet
from sdd_lightning.models import build_model
from sdd_lightning.training.module import DistillationModule
from sdd_lightning.training.teacher_cache import TeacherViewCache, cache_bytes

BATCH, CLASSES, IMAGES, VIEWS = 64, 100, 50_000, 162
_AUGMENT_STREAM = 1  # as in sdd_lightning.data.device_loader


def step_timings(args: argparse.Namespace, cache_root: Path) -> tuple[dict, dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = DistillationModule(
        build_model("resnet8x4", num_classes=CLASSES),
        build_model("resnet32x4", num_classes=CLASSES),
        CLASSES,
        scales=(1, 2),
        teacher_cache_dir=str(cache_root),
    )
    module.to(device).train()
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.05, momentum=0.9)
    module._view_set = ViewSet(IMAGES, 4, "benchmark")
    module._teacher_cache = cache = TeacherViewCache(
        cache_root, {"teacher": "benchmark"}, entries=IMAGES * VIEWS, regions=5, num_classes=CLASSES, dtype="float32"
    )
    x, y = torch.randn(BATCH, 3, 32, 32, device=device), torch.randint(0, CLASSES, (BATCH,), device=device)
    stored = torch.stack([torch.arange(BATCH), torch.zeros(BATCH), torch.zeros(BATCH), torch.zeros(BATCH)], 1).long()
    module.cached_teacher_local(x, stored)  # the warm entries
    fresh = iter(range(1, IMAGES))

    def new_views(count: int) -> torch.Tensor:
        """Views never stored before: ``count`` new images, then the stored ones."""
        start = next(fresh) * BATCH % (IMAGES - BATCH)
        views = stored.clone()
        views[:count, 0] = torch.arange(count) + start + BATCH
        views[:count, 3] = 1
        return views

    def step(teacher_local) -> None:
        global_logits, local = module.student_logits(x)
        loss, _ = module.compute_loss(global_logits, local, teacher_local(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def whole_batch_half() -> torch.Tensor:
        views = new_views(BATCH // 2)
        ids = module._view_set.flat_ids(views).numpy()
        found, _ = cache.lookup(ids)
        computed = module.teacher_logits(x)[1]
        cache.store(ids[~found], computed[torch.from_numpy(~found).to(device)].cpu().numpy())
        return computed

    variants = {
        "no cache": lambda: step(lambda: module.teacher_logits(x)[1]),
        "warm cache": lambda: step(lambda: module.cached_teacher_local(x, stored)),
        "cold cache": lambda: step(lambda: module.cached_teacher_local(x, new_views(BATCH))),
        "50% hits, teacher on the misses": lambda: step(lambda: module.cached_teacher_local(x, new_views(BATCH // 2))),
        "50% hits, teacher on the whole batch": lambda: step(whole_batch_half),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    timings = interleaved(variants, repeats=args.repeats, warmup=args.warmup, sync=sync)
    return timings, cache.size()


def simulated_hit_rates(images: int, epochs: int, seeds: tuple[int, ...]) -> list[list[float]]:
    """Per run (one per seed, in order, on one cache) the hit rate of every epoch of the device pipeline's draws."""
    seen = np.zeros(images * VIEWS, dtype=bool)
    runs = []
    for seed in seeds:
        sampler = EpochSampler(images, shuffle=True, seed=seed)
        rates = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            order = torch.as_tensor(list(sampler))
            hits = 0
            for batch, start in enumerate(range(0, images, BATCH)):
                index = order[start : start + BATCH]
                generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0, _AUGMENT_STREAM, batch))
                offsets, flipped = draw_crop_flip(len(index), 4, generator, device=torch.device("cpu"))
                ids = ((index * 81 + offsets[0] * 9 + offsets[1]) * 2 + flipped.long()).numpy()
                hits += int(seen[ids].sum())
                seen[ids] = True
            rates.append(hits / images)
        runs.append(rates)
    return runs


def float16_effect(spreads: tuple[float, ...] = (1.0, 10.0)) -> list[tuple[float, float, float]]:
    """Per logit spread (standard deviation): the largest relative rounding of a logit and the relative change of
    the SD-KD loss, float16 entries against float32. No trained teacher here: the untrained ResNet32x4's logits,
    scaled to each spread."""
    torch.manual_seed(0)
    module = DistillationModule(
        build_model("resnet8x4", num_classes=CLASSES), build_model("resnet32x4", num_classes=CLASSES), CLASSES
    )
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, CLASSES, (BATCH,))
    _, untrained = module.teacher_logits(x)
    student_global, student_local = module.student_logits(x)
    results = []
    for spread in spreads:
        teacher = untrained * (spread / untrained.std())
        rounded = teacher.half().float()
        exact = module.compute_loss(student_global, student_local, teacher, y)[1].terms["loss_kd"]
        half = module.compute_loss(student_global, student_local, rounded, y)[1].terms["loss_kd"]
        relative = ((rounded - teacher).abs() / teacher.abs().clamp(min=1e-6)).max()
        results.append((spread, float(relative), float((half - exact).abs() / exact)))
    return results


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__), repeats=5, warmup=2)
    parser.add_argument("--sim-images", type=int, default=10_000, help="images in the hit-rate simulation")
    parser.add_argument("--epochs", type=int, default=240, help="epochs per run in the hit-rate simulation")
    parser.add_argument("--device", default="cpu", help="where the step runs: cpu, or cuda in a GPU lease")
    args = parser.parse_args()
    setup_threads(args.threads)
    lines = ["# Teacher view cache", "", machine_description(), f"load average before: {load_average()}", ""]

    with tempfile.TemporaryDirectory() as folder:
        timings, size = step_timings(args, Path(folder))
    base = timings["no cache"].median
    lines += [
        f"## Step time on {args.device}, ResNet32x4 -> ResNet8x4, SD-KD M={{1,2}}, batch {BATCH}, "
        f"{args.threads} threads, {args.repeats} rounds",
        "",
        markdown_table(
            ["variant", "time / no cache (median)", "IQR / median"],
            [[name, f"{t.median / base:.2f}", f"{t.spread:.2f}"] for name, t in timings.items()],
        ),
        "",
        f"speed-up of a warm cache: {base / timings['warm cache'].median:.2f}x; load average after: {load_average()}",
        f"cache after the run: {size['entries']} entries, {size['bytes_on_disk'] / 1e6:.1f} MB on disk of a "
        f"{size['bytes_full'] / 1e9:.1f} GB sparse file",
        "",
    ]

    runs = simulated_hit_rates(args.sim_images, args.epochs, seeds=(0, 1, 2))
    expected = 1 - VIEWS * (1 - (1 - 1 / VIEWS) ** args.epochs) / args.epochs
    lines += [
        f"## Hit rate ({args.sim_images} images, {args.epochs} epochs per run, device-resident draws)",
        "",
        markdown_table(
            ["run on the cache", "over the run", "first epoch", "last epoch"],
            [[i + 1, f"{np.mean(r):.3f}", f"{r[0]:.3f}", f"{r[-1]:.3f}"] for i, r in enumerate(runs)],
        ),
        "",
        f"expected over a first run: {expected:.3f}",
        "",
    ]

    rows = []
    for label, scales in (("{1,2,4}", (1, 2, 4)), ("{1,2}", (1, 2)), ("{1,2,4}, 4x4 grid only (not offered)", (4,))):
        for dtype in ("float32", "float16"):
            gigabytes = cache_bytes(IMAGES, VIEWS, scales, CLASSES, dtype) / 1e9
            rows.append([label, sum(s * s for s in scales), dtype, f"{gigabytes:.1f}"])
    lines += ["## Disk, CIFAR-100 (50,000 images x 162 views x R x 100 classes)", ""]
    lines += [markdown_table(["scales", "R", "dtype", "GB"], rows), ""]

    lines += ["## float16 entries (untrained teacher's logits scaled to a spread)", ""]
    lines += [
        markdown_table(
            ["logit std", "largest relative rounding of a logit", "relative change of the SD-KD loss"],
            [[f"{s:g}", f"{r:.1e}", f"{c:.1e}"] for s, r, c in float16_effect()],
        )
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
