"""``$OUT``: what comes back from the GPU machine, and the device tool's limits on it.

The tool brings back at most 8 files, 16 MiB each, 64 MiB in all, no more than 2 folders down, each file and
folder named in letters, digits, '.', '_' and '-' alone (:data:`OUT_LIMITS`). :func:`check_out_dir` names each
breach; :func:`pack_logs` writes the runs' logs as one ``logs.tar.xz`` that stays under the per-file limit.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from campaign.children import Child, tail_bytes

__all__ = ["OUT_LIMITS", "MiB", "check_out_dir", "pack_logs", "sha256_file"]

MiB = 2**20
OUT_LIMITS = {"files": 8, "file_bytes": 16 * MiB, "total_bytes": 64 * MiB, "depth": 2}
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
RUN_FILES = ("results.json", "lease_clock.json", "config_resolved.yaml")


def sha256_file(path: Path) -> str:
    """The file's sha256, hex."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_out_dir(out: Path) -> list[str]:
    """What in ``out`` breaks the device tool's limits on files that come back (empty: nothing)."""
    problems, files = [], []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if not all(OUT_NAME.match(part) for part in relative.parts):
            problems.append(f"{relative}: names may hold letters, digits, '.', '_' and '-' only")
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{relative}: only plain files and folders come back")
        elif path.is_file():
            files.append(path)
            if len(relative.parts) - 1 > OUT_LIMITS["depth"]:
                problems.append(f"{relative}: more than {OUT_LIMITS['depth']} folders down")
            if path.stat().st_size > OUT_LIMITS["file_bytes"]:
                problems.append(f"{relative}: {path.stat().st_size / MiB:.1f} MiB is over 16 MiB")
    if len(files) > OUT_LIMITS["files"]:
        problems.append(f"{len(files)} files: at most {OUT_LIMITS['files']} come back")
    total = sum(path.stat().st_size for path in files)
    if total > OUT_LIMITS["total_bytes"]:
        problems.append(f"{total / MiB:.1f} MiB in all: at most 64 MiB come back")
    return problems


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    archive.addfile(info, io.BytesIO(data))


def pack_logs(path: Path, children: Sequence[Child], runner_log: str) -> bool:
    """Writes ``path`` (tar.xz): the runner's log, and for every child the tail of its log, its ``results.json``,
    clock file, resolved config, ``metrics.csv`` and (an export) model card. Trims the logs and leaves the metrics
    out when that is needed to stay under 16 MiB; returns ``False`` when even that does not fit (nothing written).
    """
    for tail, with_metrics in ((512 * 1024, True), (64 * 1024, False), (8 * 1024, False)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
            _add_bytes(archive, "runner.log", runner_log.encode())
            for child in children:
                _add_bytes(archive, f"{child.name}/log.txt", tail_bytes(child.log, tail))
                names = [*RUN_FILES, *(["csv/metrics.csv"] if with_metrics else [])]
                names += [p.name for p in child.dir.glob("*.md")] if child.name.startswith("export-") else []
                for name in names:
                    if (child.dir / name).is_file():
                        archive.add(child.dir / name, arcname=f"{child.name}/{Path(name).name}")
        if buffer.tell() <= OUT_LIMITS["file_bytes"]:
            path.write_bytes(buffer.getvalue())
            return True
    return False
