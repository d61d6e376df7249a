"""Carry CIFAR-100 to a machine that can only receive small uploads: pack into chunks, check, unpack.

    python scripts/pack_cifar.py pack ../shared/data/cifar-100-python .pack   # .pack/part-00 ... + manifest.json
    # on the other machine, one part per upload, appended in order:
    cat .pack/part-00 >> /tmp/cifar.tar.xz   (then part-01, ...)
    python scripts/pack_cifar.py unpack /tmp/cifar.tar.xz .pack/manifest.json /tmp/data

The archive is a lossless tar.xz of train, test and meta; `unpack` checks the archive's sha256 and
then every file's sha256 against the manifest before it reports success. Never commit the parts:
keep the output folder out of git (e.g. `echo /.pack/ >> .git/info/exclude`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import sys
import tarfile
from pathlib import Path

FILES = ("train", "test", "meta")
CHUNK_BYTES = 55 * 1024 * 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(source: Path, out: Path, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Writes ``out/part-NN`` chunks of a tar.xz of ``source``'s three files, and ``out/manifest.json``."""
    missing = [name for name in FILES if not (source / name).is_file()]
    if missing:
        raise SystemExit(f"{source} lacks {missing}: give the cifar-100-python folder")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "cifar-100-python.tar.xz"
    with tarfile.open(archive, "w:xz", preset=6 | lzma.PRESET_EXTREME) as tar:
        for name in FILES:
            tar.add(source / name, arcname=f"cifar-100-python/{name}")
    data = archive.read_bytes()
    parts = []
    for index, start in enumerate(range(0, len(data), chunk_bytes)):
        part = out / f"part-{index:02d}"
        part.write_bytes(data[start : start + chunk_bytes])
        parts.append(part.name)
    manifest = {
        "archive_sha256": hashlib.sha256(data).hexdigest(),
        "archive_bytes": len(data),
        "parts": parts,
        "files_sha256": {name: sha256(source / name) for name in FILES},
    }
    archive.unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def unpack(archive: Path, manifest_path: Path, destination: Path) -> None:
    """Checks the reassembled archive and its files against the manifest, then leaves them in place."""
    manifest = json.loads(manifest_path.read_text())
    size = archive.stat().st_size
    if size != manifest["archive_bytes"] or sha256(archive) != manifest["archive_sha256"]:
        raise SystemExit(
            f"{archive}: {size} bytes, expected {manifest['archive_bytes']} with the manifest's sha256: "
            "a part is missing, repeated or out of order; rebuild it from part-00 on"
        )
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(destination, filter="data")
    for name, expected in manifest["files_sha256"].items():
        got = sha256(destination / "cifar-100-python" / name)
        if got != expected:
            raise SystemExit(f"{destination}/cifar-100-python/{name}: sha256 {got}, expected {expected}")
    print(f"ok: {destination}/cifar-100-python verified ({', '.join(manifest['files_sha256'])})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="source folder -> chunks")
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--chunk-mib", type=int, default=55)
    u = sub.add_parser("unpack", help="reassembled archive -> checked files")
    u.add_argument("archive", type=Path)
    u.add_argument("manifest", type=Path)
    u.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.source, args.out, args.chunk_mib * 1024 * 1024)
        print(json.dumps(manifest, indent=2))
    else:
        unpack(args.archive, args.manifest, args.destination)


if __name__ == "__main__":
    sys.exit(main())
