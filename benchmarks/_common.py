"""Timing helpers shared by bench_loss.py, bench_step.py, bench_precision.py and gpu_step.py.

Every benchmark here measures several variants *interleaved*: one round runs every variant once (in a
rotated order), and the rounds repeat. Background load (other test runs on the same cores) then hits all
variants alike instead of whichever happened to run last. Results are reported as the median over
rounds with the interquartile range and the min-max, and every table is preceded by a description of the
machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "HostReadCounter",
    "Timing",
    "add_common_args",
    "calibrate",
    "interleaved",
    "load_average",
    "machine_description",
    "markdown_table",
    "setup_threads",
    "write_report",
]


@dataclass
class Timing:
    """Seconds per call of one variant, one sample per round."""

    name: str
    samples: list[float]
    cpu_samples: list[float] | None = None
    """Process CPU seconds (all threads) per call, one per round: less sensitive to other processes taking the
    cores than wall time, but it counts OpenMP spin-waiting too."""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        pos = q * (len(ordered) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    @property
    def iqr(self) -> tuple[float, float]:
        return self.quantile(0.25), self.quantile(0.75)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median, a noise figure."""
        lo, hi = self.iqr
        return (hi - lo) / self.median if self.median > 0 else 0.0

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples) if self.cpu_samples else float("nan")

    def ms(self) -> str:
        """``median [q25-q75] (min-max)`` in milliseconds."""
        lo, hi = self.iqr
        low, high = min(self.samples), max(self.samples)
        return f"{self.median * 1e3:.2f} [{lo * 1e3:.2f}-{hi * 1e3:.2f}] ({low * 1e3:.2f}-{high * 1e3:.2f})"


def interleaved(
    variants: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 2,
    number: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Times every variant ``repeats`` times, one round of all variants at a time.

    Args:
        variants: name -> a function doing one unit of work (e.g. one forward+backward).
        repeats: rounds; each yields one sample per variant.
        warmup: untimed calls of every variant first (allocator, oneDNN primitive caches, autotuning).
        number: calls per sample; the sample is their mean (for work far shorter than a millisecond).
        sync: called before reading the clock (``torch.cuda.synchronize`` on a GPU).
    """
    sync = sync or (lambda: None)
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync()
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(number):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / number)
            cpu[name].append((time.process_time() - start_cpu) / number)
    return {n: Timing(n, samples[n], cpu[n]) for n in names}


class HostReadCounter(TorchDispatchMode):
    """Counts the operators that read tensor values back to the host (a synchronisation on a GPU).

    ``.item()``, ``bool(t)``, ``float(t)`` and ``print(t)`` all go through ``aten._local_scalar_dense``;
    ``nonzero``, ``masked_select``, boolean indexing and ``unique`` need the data to size their output. Works on
    CPU tensors, so a CPU run shows where a GPU run would wait. ``sites`` names the first frame outside torch.
    """

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "equal")

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.SYNCING:
            site = self._site()
            key = f"{name} @ {site}"
            self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _site() -> str:
        import traceback

        frames = traceback.extract_stack()[:-3]
        for frame in reversed(frames):
            path = frame.filename.replace("\\", "/")
            if "/torch/" not in path and "_common.py" not in path:
                parts = path.split("/")
                short = "/".join(parts[-2:])
                return f"{short}:{frame.lineno} ({frame.name})"
        return "?"


def calibrate(fn: Callable[[], object], *, target_seconds: float = 0.02, sync: Callable[[], None] | None = None) -> int:
    """Calls per sample so that one sample lasts about ``target_seconds`` (at least 1)."""
    sync = sync or (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, round(target_seconds / once))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. to print after a run (other processes share the cores)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"


def machine_description() -> str:
    """One paragraph: CPU, ISA flags relevant to bf16, threads, load, torch version, GPU if any."""
    parts = [
        f"CPU: {_cpu_model()} ({os.cpu_count()} logical cores; flags: {' '.join(_cpu_flags()) or 'n/a'}; "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()})",
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
        f"load average at start {load_average()}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    return "; ".join(parts)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int, warmup: int) -> argparse.ArgumentParser:
    """``--repeats``, ``--warmup``, ``--threads``, ``--out``."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per variant first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    return parser


def setup_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def write_report(text: str, out: Path | None) -> None:
    """Prints the report and writes it to ``out`` when given."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
