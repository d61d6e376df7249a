"""An exact cache of a frozen teacher's region logits, one entry per training image and augmentation view.

A frozen teacher in eval mode gives the same region logits every time it sees the same view of the same image,
and CIFAR's augmentation has only 162 views per image (:mod:`sdd_lightning.data.views`); a CIFAR sweep that
shares a teacher therefore repeats nearly all of its forwards. This cache stores the ``(R, K)`` region logits
the live path computes, keyed by everything they depend on, so a student reads them instead.

On disk, one folder per key under the cache root, named ``<teacher hash>-<key hash>``:

- ``meta.json``: the key (teacher weights' hash, scales, pooling, the data's fingerprint, how the logits were
  computed: device type, autocast and memory format) and the shapes;
- ``logits.bin``: ``(num_images * views, R, K)`` values (float32, or float16 by choice), a sparse file;
- ``valid.bin``: one byte per entry, 1 once its logits are in ``logits.bin``.

Both files are memory-mapped by every process that uses the cache. A writer puts the logits, flushes them to
the file, and only then sets the marks; a reader reads the marks, then the logits of marked entries. So a
writer killed at any moment leaves no wrong entry marked valid, marks only ever go from 0 to 1, and two
processes filling the same entry write the same bytes (the key includes how the values are computed). A
teacher whose weights change has another hash, hence another folder: old entries are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdd_lightning.errors import TeacherCacheError

__all__ = ["TeacherCacheError", "TeacherViewCache", "cache_bytes", "state_dict_hash"]

_DTYPES = {"float32": np.float32, "float16": np.float16}


def state_dict_hash(network: nn.Module) -> str:
    """A hex SHA-256 of ``network``'s state dict as it holds it (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_bytes(num_images: int, views: int, scales: Sequence[int], num_classes: int, dtype: str = "float32") -> int:
    """Bytes of one full cache: ``num_images * views * R * K`` values, plus the marks."""
    regions = sum(s * s for s in scales)
    return num_images * views * (regions * num_classes * np.dtype(_DTYPES[dtype]).itemsize + 1)


class TeacherViewCache:
    """The region logits of one teacher, scale set and data set, per ``(image, view)`` entry, shared on disk.

    Args:
        root: The cache folder (``teacher.cache_dir``); created if missing.
        key: What the logits depend on besides the entry: at least ``teacher`` (its :func:`state_dict_hash`),
            ``scales``, ``pooling``, ``data`` (the images' fingerprint) and ``compute`` (device type, autocast,
            memory format). Plain JSON values.
        entries: Number of entries (images x views per image).
        regions: ``R``, regions per entry.
        num_classes: ``K``.
        dtype: ``"float32"`` (what the live path computes, exact) or ``"float16"`` (half the disk; rounds).
    """

    def __init__(
        self, root: str | Path, key: dict[str, Any], *, entries: int, regions: int, num_classes: int, dtype: str
    ) -> None:
        if dtype not in _DTYPES:
            raise TeacherCacheError(f"teacher.cache_dtype={dtype}: use float32 (exact) or float16 (half the disk)")
        meta = {"key": key, "entries": entries, "regions": regions, "num_classes": num_classes, "dtype": dtype}
        key_hash = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root).expanduser() / f"{str(key['teacher'])[:16]}-{key_hash}"
        self.meta = meta
        _create(self.folder, meta)
        found = json.loads((self.folder / "meta.json").read_text())
        if found != meta:
            raise TeacherCacheError(
                f"{self.folder} holds a cache for another teacher or data set than its name says ({found['key']}): "
                "delete that folder"
            )
        shape = (entries, regions, num_classes)
        self.logits = np.memmap(self.folder / "logits.bin", _DTYPES[dtype], "r+", shape=shape)
        self.valid = np.memmap(self.folder / "valid.bin", np.uint8, "r+", shape=(entries,))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which entries ``ids`` are stored (bool ``(n,)``), and the float32 logits ``(found, R, K)`` of those."""
        found = np.asarray(self.valid[ids]) == 1  # marks first: a marked entry's logits are already in the file
        return found, np.asarray(self.logits[ids[found]], dtype=np.float32)

    def store(self, ids: np.ndarray, logits: np.ndarray) -> None:
        """Writes the logits ``(n, R, K)`` of entries ``ids``, flushes them to the file, then marks them valid."""
        self.logits[ids] = logits
        self.logits.flush()
        self.valid[ids] = 1

    def size(self) -> dict[str, int]:
        """``entries`` stored, ``bytes_on_disk`` (allocated blocks of the sparse files) and ``bytes_full``."""
        on_disk = sum(os.stat(self.folder / name).st_blocks * 512 for name in ("logits.bin", "valid.bin"))
        full = self.logits.nbytes + self.valid.nbytes
        return {"entries": int(np.count_nonzero(self.valid)), "bytes_on_disk": on_disk, "bytes_full": full}


def _create(folder: Path, meta: dict[str, Any]) -> None:
    """Makes ``folder`` with its meta and two empty (sparse) files, atomically: a rename, which one process wins."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries, per_entry = meta["entries"], meta["regions"] * meta["num_classes"]
        with open(staging / "logits.bin", "wb") as f:
            f.truncate(entries * per_entry * np.dtype(_DTYPES[meta["dtype"]]).itemsize)
        with open(staging / "valid.bin", "wb") as f:
            f.truncate(entries)
        (staging / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1))
        try:
            staging.rename(folder)
        except OSError:  # another process made it first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
