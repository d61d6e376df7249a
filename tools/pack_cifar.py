"""Carry CIFAR-100 to a machine that takes small uploads: lossless WebP chunks, checked byte for byte.

    python tools/pack_cifar.py pack ../shared/data/cifar-100-python .pack --chunks 2
    # -> .pack/cifar100-1of2.zip, .pack/cifar100-2of2.zip (each <= 55 MiB) and .pack/manifest.json
    # on the other machine, with every chunk in one folder:
    python tools/pack_cifar.py unpack CHUNK_DIR .pack/manifest.json /tmp/data   # -> /tmp/data/cifar-100-python
    python tools/pack_cifar.py verify /tmp/data/cifar-100-python .pack/manifest.json

How it is stored. The images of each split (uint8 ``(N, 3072)``, channel-planar RGB) are cut into strips of
100 consecutive images, each strip one lossless WebP image 32 pixels wide and 32 x 100 high (images stacked
top to bottom); at WebP method 5 this is 98 MB for the 60,000 images, against 137 MB for xz of the pickles.
The rest of each pickle (file names, labels, the pickle framing) is kept as the file's own bytes with the
image bytes cut out ("skeleton", xz-compressed), so ``unpack`` writes back pickles byte-identical to the
originals, which the data module reads unchanged. The strips are shared between the chunks (zip files,
strips stored, skeletons xz) so that the chunks are of nearly equal size; each chunk is a plain zip.

What is checked. ``manifest.json`` holds the sha256 of every chunk, of every original file, and of the arrays
each split holds: ``data`` as its uint8 ``(N, 3072)`` bytes, ``fine_labels`` and ``coarse_labels`` as int64
little-endian. ``unpack`` checks each chunk before decoding, each split's decoded image array before writing
it, and then re-reads every written file (its sha256 and its arrays) before it reports success. Never commit
the chunks: keep the output folder out of git (e.g. ``echo /.pack/ >> .git/info/exclude``).

Needs only the standard library, numpy and Pillow built with WebP (PyPI's Pillow wheels are).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import lzma
import os
import pickle
import time
import zipfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

SPLITS = ("train", "test")
META = "meta"
FORMAT = "cifar100-webp-strips/1"
IMAGES_PER_STRIP = 100
WEBP_METHOD = 5
WEBP_QUALITY = 50
CHUNK_MIB = 55
_SIDE = 32
_ROW = 3 * _SIDE * _SIDE


class PackError(SystemExit):
    """A pack, chunk or unpacked folder that is not what the manifest says; the message names the fix."""


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_webp() -> None:
    """Stops with a clear message when this Pillow cannot read or write WebP."""
    if not features.check("webp"):
        raise PackError(
            "this Pillow was built without WebP (PIL.features.check('webp') is False), which the CIFAR chunks "
            "need: install a Pillow wheel from PyPI (they include WebP), e.g. carried as a wheel in .whl/"
        )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only, so that a damaged or foreign file cannot run code.

    The same list as sdd_lightning.data.cifar's reader; repeated so that this script needs no torch and no install.
    """

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle")
        if module == "numpy.core.multiarray" and not hasattr(np, "core"):
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def load_split(raw: bytes, where: str) -> dict[str, Any]:
    """The dict of a CIFAR-100 split pickle given as bytes, checked to hold a uint8 ``(N, 3072)`` ``data``."""
    try:
        content = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:
        raise PackError(f"{where} is not a readable CIFAR pickle ({type(err).__name__}: {err})") from err
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise PackError(f"{where} holds no uint8 (N, {_ROW}) 'data' array: is it a cifar-100-python split?")
    for key in ("fine_labels", "coarse_labels"):
        if len(content.get(key, ())) != len(data):
            raise PackError(f"{where}: '{key}' does not give one label per image")
    return content


def array_digests(content: dict[str, Any]) -> dict[str, str]:
    """sha256 of a split's image array (uint8 ``(N, 3072)``) and of its labels as int64 little-endian."""
    digests = {"data": sha256_bytes(np.ascontiguousarray(content["data"]).data)}
    for key in ("fine_labels", "coarse_labels"):
        digests[key] = sha256_bytes(np.asarray(content[key], dtype="<i8").tobytes())
    return digests


def encode_strip(images: np.ndarray) -> bytes:
    """Lossless WebP of up to a strip of images (uint8 ``(n, 3072)`` planar RGB), stacked top to bottom.

    The strip is decoded again and compared, so that a codec that is not lossless is caught when packing.
    """
    pixels = images.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1).reshape(-1, _SIDE, 3)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(
        out, format="WEBP", lossless=True, method=WEBP_METHOD, quality=WEBP_QUALITY, exact=True
    )
    blob = out.getvalue()
    if not np.array_equal(decode_strip(blob, "a fresh strip"), images):
        raise PackError("WebP did not return the strip's pixels unchanged: this Pillow's WebP is not lossless")
    return blob


def decode_strip(blob: bytes, where: str) -> np.ndarray:
    """Images (uint8 ``(n, 3072)`` planar RGB) of one strip written by ``encode_strip``."""
    try:
        with Image.open(io.BytesIO(blob), formats=["WEBP"]) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as err:
        raise PackError(f"{where} is not a readable WebP strip ({type(err).__name__}: {err})") from err
    if pixels.shape[1] != _SIDE or pixels.shape[0] % _SIDE:
        raise PackError(f"{where} is {pixels.shape[1]}x{pixels.shape[0]} pixels, not a strip of 32x32 images")
    return pixels.reshape(-1, _SIDE, _SIDE, 3).transpose(0, 3, 1, 2).reshape(-1, _ROW)


def _pool(jobs: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=max(1, jobs))


# How a pickle can hold the image bytes: as they are (Python 2's protocol 2, as the official files, and
# protocols 3 and up), or, from Python 3 at protocol 2, as a latin-1 text stored in UTF-8.
_IMAGE_ENCODINGS = {"raw": lambda b: b, "latin1-utf8": lambda b: b.decode("latin1").encode("utf-8")}


def _skeleton(raw: bytes, data: np.ndarray, where: str) -> tuple[bytes, int, str]:
    """The file's bytes with the image bytes cut out, where they were, and how they were written."""
    for encoding, encode in _IMAGE_ENCODINGS.items():
        image_bytes = encode(data.tobytes())
        offset = raw.find(image_bytes)
        if offset >= 0:
            return raw[:offset] + raw[offset + len(image_bytes) :], offset, encoding
    raise PackError(f"{where}: the image bytes are not stored as one run in the pickle (not a CIFAR pickle layout)")


def _split_evenly(sizes: list[int], parts: int) -> list[int]:
    """Cut points that split consecutive items of ``sizes`` into ``parts`` groups of nearly equal total."""
    total, cuts, running = sum(sizes), [], 0
    for index, size in enumerate(sizes):
        if len(cuts) < parts - 1 and running + size / 2 > total * (len(cuts) + 1) / parts:
            cuts.append(index)
        running += size
    cuts += [len(sizes)] * (parts - 1 - len(cuts))  # fewer items than parts: the last chunks stay empty
    return [0, *cuts, len(sizes)]


def chunk_name(index: int, count: int) -> str:
    """File name of chunk ``index`` (0-based) of ``count``."""
    return f"cifar100-{index + 1}of{count}.zip"


def pack(
    source: Path, out: Path, chunks: int = 2, chunk_bytes: int = CHUNK_MIB << 20, jobs: int | None = None
) -> dict[str, Any]:
    """Encodes a ``cifar-100-python`` folder into ``chunks`` zip files under ``out`` and a manifest.

    Args:
        source: The folder holding ``train``, ``test`` and ``meta``.
        out: Where the chunks and ``manifest.json`` go (created).
        chunks: Number of chunk files to write.
        chunk_bytes: Largest size a chunk may have; a pack that needs larger chunks stops with an error
            and leaves no chunk behind.
        jobs: Encoding processes (default: every core).

    Returns:
        The manifest, as written to ``out/manifest.json``.
    """
    require_webp()
    missing = [name for name in (*SPLITS, META) if not (source / name).is_file()]
    if missing:
        raise PackError(f"{source} lacks {missing}: give the cifar-100-python folder")
    if chunks < 1:
        raise PackError(f"--chunks must be at least 1, got {chunks}")
    jobs = jobs or os.cpu_count() or 1
    started = time.perf_counter()
    members: list[tuple[str, bytes]] = [(f"{META}.xz", lzma.compress((source / META).read_bytes()))]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "codec": {"webp_method": WEBP_METHOD, "webp_quality": WEBP_QUALITY, "images_per_strip": IMAGES_PER_STRIP},
        "files": {META: {"sha256": sha256_file(source / META), "bytes": (source / META).stat().st_size}},
        "splits": {},
    }
    strips: list[tuple[str, bytes]] = []
    with _pool(jobs) as pool:
        for split in SPLITS:
            raw = (source / split).read_bytes()
            content = load_split(raw, str(source / split))
            data = np.ascontiguousarray(content["data"])
            skeleton, offset, encoding = _skeleton(raw, data, str(source / split))
            members.append((f"{split}.skeleton.xz", lzma.compress(skeleton, preset=9)))
            starts = range(0, len(data), IMAGES_PER_STRIP)
            blobs = pool.map(encode_strip, (data[s : s + IMAGES_PER_STRIP] for s in starts))
            names = [f"{split}/{s:06d}.webp" for s in starts]
            strips += zip(names, blobs, strict=True)
            manifest["files"][split] = {"sha256": sha256_bytes(raw), "bytes": len(raw)}
            manifest["splits"][split] = {
                "images": len(data),
                "image_offset": offset,
                "image_encoding": encoding,
                "strips": names,
                "sha256": array_digests(content),
            }
    encode_s = time.perf_counter() - started
    items = members + strips  # the small members first, into chunk 1; then every chunk holds a like share
    groups = [items[a:b] for a, b in itertools.pairwise(_split_evenly([len(blob) for _, blob in items], chunks))]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("cifar100-*of*.zip"):  # an earlier pack's chunks must not travel with this one
        stale.unlink()
    written = [_write_chunk(out / chunk_name(i, chunks), group) for i, group in enumerate(groups)]
    too_big = [(path.name, path.stat().st_size) for path in written if path.stat().st_size > chunk_bytes]
    if too_big:
        for path in written:
            path.unlink()
        raise PackError(f"chunks {too_big} exceed the limit of {chunk_bytes} bytes: pack into more chunks (--chunks)")
    manifest["chunks"] = [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in written]
    manifest["encode_seconds"] = round(encode_s, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_chunk(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # every member is compressed already
        for name, blob in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blob)  # no clock in the bytes
    return path


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PackError(f"{path}: cannot read the manifest ({err}); give the manifest.json written by pack") from err
    if manifest.get("format") != FORMAT:
        raise PackError(f"{path} is not a manifest of this packer (format {manifest.get('format')!r}, need {FORMAT})")
    return manifest


def check_chunks(chunk_dir: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """Checks every chunk named by the manifest against its size and sha256; returns member name -> chunk.

    Raises:
        PackError: A chunk is missing or differs from the one packed.
    """
    where: dict[str, Path] = {}
    for chunk in manifest["chunks"]:
        path = chunk_dir / chunk["name"]
        if not path.is_file():
            raise PackError(
                f"chunk {chunk['name']} is missing from {chunk_dir}: copy every chunk there "
                "(a machine given back between two uploads loses the first; upload it again)"
            )
        size, digest = path.stat().st_size, sha256_file(path)
        if size != chunk["bytes"] or digest != chunk["sha256"]:
            raise PackError(
                f"chunk {path} is damaged or from another pack: {size} bytes with sha256 {digest}, expected "
                f"{chunk['bytes']} bytes with sha256 {chunk['sha256']}; copy it again from the pack"
            )
        with zipfile.ZipFile(path) as archive:
            where.update(dict.fromkeys(archive.namelist(), path))
    return where


def unpack(chunk_dir: Path, manifest_path: Path, destination: Path, jobs: int | None = None) -> Path:
    """Decodes the chunks in ``chunk_dir`` into ``destination/cifar-100-python``, checking every sha256.

    Args:
        chunk_dir: Folder holding every chunk of the pack.
        manifest_path: The pack's ``manifest.json``.
        destination: Where ``cifar-100-python/{train,test,meta}`` is written.
        jobs: Decoding processes (default: every core).

    Returns:
        The written ``cifar-100-python`` folder, verified against the manifest.
    """
    require_webp()
    manifest = _read_manifest(manifest_path)
    where = check_chunks(chunk_dir, manifest)
    absent = [name for info in manifest["splits"].values() for name in info["strips"] if name not in where]
    if absent:
        raise PackError(f"no chunk holds {absent[:3]}: the chunks in {chunk_dir} are not the whole pack")
    folder = destination / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        archives = {path: stack.enter_context(zipfile.ZipFile(path)) for path in set(where.values())}

        def read(name: str) -> bytes:
            return archives[where[name]].read(name)

        (folder / META).write_bytes(lzma.decompress(read(f"{META}.xz")))
        pool = stack.enter_context(_pool(jobs or os.cpu_count() or 1))
        for split, info in manifest["splits"].items():
            parts = list(pool.map(decode_strip, map(read, info["strips"]), info["strips"], chunksize=8))
            data = np.concatenate(parts) if parts else np.zeros((0, _ROW), np.uint8)
            digest = sha256_bytes(data.data)
            if data.shape[0] != info["images"] or digest != info["sha256"]["data"]:
                raise PackError(
                    f"{split}: the decoded images ({data.shape[0]}, sha256 {digest}) differ from the packed ones "
                    f"({info['images']}, sha256 {info['sha256']['data']}); this WebP decoder is not lossless"
                )
            skeleton, offset = lzma.decompress(read(f"{split}.skeleton.xz")), info["image_offset"]
            with (folder / split).open("wb") as f:
                f.write(skeleton[:offset])
                f.write(_IMAGE_ENCODINGS[info["image_encoding"]](data.tobytes()))
                f.write(skeleton[offset:])
    verify(folder, manifest_path)
    return folder


def verify(folder: Path, manifest_path: Path) -> None:
    """Checks a ``cifar-100-python`` folder's files and arrays against the manifest, and prints what it checked.

    Raises:
        PackError: A file is missing or any sha256 differs.
    """
    manifest = _read_manifest(manifest_path)
    missing = [name for name in manifest["files"] if not (folder / name).is_file()]
    if missing:
        raise PackError(f"{folder} lacks {missing}: unpack the chunks again")
    for split, info in manifest["splits"].items():
        got = array_digests(load_split((folder / split).read_bytes(), str(folder / split)))
        wrong = [key for key, digest in info["sha256"].items() if got.get(key) != digest]
        if wrong:
            raise PackError(f"{folder / split}: the arrays {wrong} differ from the original's; unpack the chunks again")
    for name, expected in manifest["files"].items():  # the arrays agree; the files must be the same bytes too
        if sha256_file(folder / name) != expected["sha256"]:
            raise PackError(f"{folder / name}: sha256 differs from the original file's; unpack the chunks again")
    counts = ", ".join(f"{split} {info['images']}" for split, info in manifest["splits"].items())
    print(f"ok: {folder} equals the original (files and arrays sha256; {counts} images)")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``pack``, ``unpack`` and ``verify`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="cifar-100-python folder -> chunks + manifest.json")
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--chunk-mib", type=float, default=CHUNK_MIB, help="largest chunk allowed, MiB")
    p.add_argument("--jobs", type=int, default=None, help="encoding processes (default: every core)")
    u = sub.add_parser("unpack", help="folder of chunks -> DEST/cifar-100-python, checked")
    u.add_argument("chunk_dir", type=Path)
    u.add_argument("manifest", type=Path)
    u.add_argument("destination", type=Path)
    u.add_argument("--jobs", type=int, default=None, help="decoding processes (default: every core)")
    v = sub.add_parser("verify", help="check a cifar-100-python folder against the manifest")
    v.add_argument("folder", type=Path)
    v.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.command == "pack":
        manifest = pack(args.source, args.out, args.chunks, int(args.chunk_mib * (1 << 20)), args.jobs)
        for chunk in manifest["chunks"]:
            print(f"{args.out / chunk['name']}: {chunk['bytes']} bytes ({chunk['bytes'] / (1 << 20):.2f} MiB)")
        print(f"encoded in {manifest['encode_seconds']} s; manifest {args.out / 'manifest.json'}")
    elif args.command == "unpack":
        unpack(args.chunk_dir, args.manifest, args.destination, args.jobs)
    else:
        verify(args.folder, args.manifest)
    print(f"{args.command}: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
