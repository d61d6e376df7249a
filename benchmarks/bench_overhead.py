"""Benchmark: Lightning's own cost per training step, against a bare loop over the same module's pieces.

Usage::

    .venv/bin/python benchmarks/bench_overhead.py [--rounds 5] [--against <src folder of another version>]

Tiny networks (small_cnn -> tiny_cnn), SD-KD (scales 1, 2, 4), batch 8, 32x32 random images, one thread, so
that the networks cost little and what is measured is the per-step work around them.

- ``lightning``: ``DistillationModule`` fitted by a ``lightning.Trainer`` set up as ``sdd-train`` sets it up on
  a CPU (a CSV logger, log_every_n_steps=50, gradient clipping at norm 40, a rich progress bar refreshed every
  10 steps; no checkpoint or validation inside the timed steps);
- ``bare``: the module's own pieces (``teacher_logits``, ``student_logits``, ``compute_loss``) with
  ``backward``, ``clip_grad_norm_`` and ``SGD.step`` in a plain loop.

A step's time is the difference of two fits (or loops) of N1 and N2 steps divided by N2 - N1, so set-up costs
cancel. With ``--against``, every round also runs the same measurement on another version of the package (a
``src`` folder, e.g. of an older commit checked out with ``git worktree``) in alternating subprocesses, so the
two versions are compared under the same load. Host reads per step (the synchronisations a GPU would wait on)
are counted for the Lightning step of each version.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHORT, LONG = 20, 220


def _worker(args: argparse.Namespace) -> dict:
    """One round of measurements in this process, for the package version on ``sys.path``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(HERE))
    from _common import HostReadCounter

    from sdd_lightning.models import build_model
    from sdd_lightning.training.module import DistillationModule

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    def module() -> DistillationModule:
        torch.manual_seed(0)
        teacher, student = build_model("small_cnn", 16), build_model("tiny_cnn", 16)
        try:  # this version takes the base loss as an object
            from sdd_lightning.method.losses import KDLoss

            loss = {"loss": KDLoss(temperature=4.0)}
        except ImportError:  # an older version takes its settings
            loss = {"temperature": 4.0}
        return DistillationModule(student, teacher, 16, scales=(1, 2, 4), ce_weight=0.1, kd_weight=0.9, **loss)

    g = torch.Generator().manual_seed(0)
    images = torch.randn(LONG * args.batch, 3, 32, 32, generator=g)
    data = TensorDataset(images, torch.randint(0, 16, (LONG * args.batch,), generator=g))

    def lightning_fit(steps: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = L.Trainer(
                accelerator="cpu",
                max_epochs=1,
                limit_train_batches=steps,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                gradient_clip_val=40.0,
                log_every_n_steps=50,
                logger=CSVLogger(tmp, name="csv", version=""),
                callbacks=[RichProgressBar(refresh_rate=10)],
                enable_checkpointing=False,
                enable_model_summary=False,
                default_root_dir=tmp,
            )
            m = module()
            loader = DataLoader(data, batch_size=args.batch)
            start = time.perf_counter()
            trainer.fit(m, loader)
            return time.perf_counter() - start

    def bare_loop(steps: int) -> float:
        m = module()
        m.train()
        optimizer = torch.optim.SGD(m.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loader = DataLoader(data, batch_size=args.batch)
        start = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if i == steps:
                break
            try:
                student_global, student_local = m.student_logits(x)
                teacher_local = m.teacher_logits(x)[1]
                loss, _ = m.compute_loss(student_global, student_local, teacher_local, y)
            except AttributeError:  # an older version: local logits only, region 0 global
                student_local, teacher_local = m.student_local_logits(x), m.teacher_local_logits(x)
                loss, _ = m.compute_loss(student_local, teacher_local, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.trainable_parameters(), 40.0)
            optimizer.step()
        return time.perf_counter() - start

    def per_step(run) -> float:
        return (run(LONG) - run(SHORT)) / (LONG - SHORT)

    result = {"lightning": per_step(lightning_fit), "bare": per_step(bare_loop)}
    if args.count_reads:  # the reads of the extra steps of the long fit: set-up and teardown cancel
        counts = {}
        for steps in (SHORT, LONG):
            with HostReadCounter() as counter:
                lightning_fit(steps)
            counts[steps] = counter.counts
        per_site = {site: (n - counts[SHORT].get(site, 0)) / (LONG - SHORT) for site, n in counts[LONG].items()}
        result["host_reads_per_step"] = sum(per_site.values())
        result["host_read_sites"] = {site: n for site, n in per_site.items() if n > 0}
    return result


def _run_worker(src: Path | None, args: argparse.Namespace, count_reads: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--worker", "--batch", str(args.batch)]
    command += ["--count-reads"] if count_reads else []
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({src or 'this version'}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--against", type=Path, default=None, help="the src folder of another version to compare")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count-reads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    versions = {"this version": None} | ({f"other ({args.against})": args.against} if args.against else {})
    samples: dict[str, list[dict]] = {name: [] for name in versions}
    for r in range(args.rounds):
        for name, src in versions.items():
            samples[name].append(_run_worker(src, args, count_reads=(r == 0)))
    lines = [
        f"## Per-step cost around the networks (small_cnn -> tiny_cnn, SD-KD, B={args.batch}, 1 thread)",
        "",
        f"Medians over {args.rounds} rounds (alternating versions); a step = (fit of {LONG} - fit of {SHORT} steps) / "
        f"{LONG - SHORT}. Load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
        "| version | Lightning ms/step | bare ms/step | Lightning - bare | host reads per Lightning step |",
        "|---|---|---|---|---|",
    ]
    for name, rows in samples.items():
        light = statistics.median(row["lightning"] for row in rows) * 1e3
        bare = statistics.median(row["bare"] for row in rows) * 1e3
        reads = rows[0].get("host_reads_per_step", float("nan"))
        lines.append(f"| {name} | {light:.2f} | {bare:.2f} | {light - bare:.2f} | {reads:.2f} |")
    for name, rows in samples.items():
        sites = rows[0].get("host_read_sites", {})
        if sites:
            lines += ["", f"Host reads per Lightning step of {name}, by site:", ""]
            lines += [f"- {count:.2f} x {site}" for site, count in sorted(sites.items(), key=lambda kv: -kv[1])]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
