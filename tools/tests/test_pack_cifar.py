"""tools/pack_cifar.py: CIFAR-100 pickles -> lossless WebP chunks -> the same pickles, every step checked."""

from __future__ import annotations

import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.fixtures import write_cifar100

from sdd_lightning.data.cifar import read_cifar100_meta, read_cifar100_split

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import pack_cifar


def _smooth_cifar(root: Path, protocol: int) -> Path:
    """The fixture's pickles, rewritten with smooth images (so they compress) at the given pickle protocol."""
    folder = write_cifar100(root, train_per_class=2, test_per_class=1)
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        with (folder / split).open("rb") as f:
            content = pickle.load(f, encoding="latin1")
        n = len(content["data"])
        ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.int64)
        images = (ramp[None, None] * rng.integers(1, 4, (n, 3, 1, 1)) + rng.integers(0, 40, (n, 3, 1, 1))) % 256
        content["data"] = images.astype(np.uint8).reshape(n, 3072)
        with (folder / split).open("wb") as f:
            pickle.dump(content, f, protocol=protocol)
    return folder


@pytest.fixture
def packed(tmp_path, monkeypatch):
    """A fixture folder (200 train, 100 test images) packed into two chunks of 64-image strips."""
    monkeypatch.setattr(pack_cifar, "IMAGES_PER_STRIP", 64)  # 200 = 64 + 64 + 64 + 8: a partial strip too
    source = _smooth_cifar(tmp_path / "src", protocol=2)
    manifest = pack_cifar.pack(source, tmp_path / "pack", chunks=2, jobs=2)
    return source, tmp_path / "pack", manifest


# protocol 2 from Python 3 stores the image bytes as latin-1 text in UTF-8; 4, like the official files
# (Python 2, protocol 2), stores them as they are: both must come back byte for byte
@pytest.mark.parametrize("protocol", [2, 4])
def test_round_trip_gives_back_the_same_files_and_arrays(tmp_path, monkeypatch, protocol):
    monkeypatch.setattr(pack_cifar, "IMAGES_PER_STRIP", 64)
    source = _smooth_cifar(tmp_path / "src", protocol)
    manifest = pack_cifar.pack(source, tmp_path / "pack", chunks=2, jobs=2)

    chunks = sorted(p.name for p in (tmp_path / "pack").glob("*.zip"))
    assert chunks == ["cifar100-1of2.zip", "cifar100-2of2.zip"]
    assert [c["name"] for c in manifest["chunks"]] == chunks
    assert manifest["splits"]["train"]["strips"][-1] == "train/000192.webp"
    sizes = [c["bytes"] for c in manifest["chunks"]]
    raw_bytes = sum((source / name).stat().st_size for name in ("train", "test"))
    assert sum(sizes) < raw_bytes / 2  # smooth images: the codec did compress

    folder = pack_cifar.unpack(tmp_path / "pack", tmp_path / "pack" / "manifest.json", tmp_path / "out", jobs=2)
    assert folder == tmp_path / "out" / "cifar-100-python"
    for name in ("train", "test", "meta"):
        assert (folder / name).read_bytes() == (source / name).read_bytes()
    for split in ("train", "test"):  # and the data module's reader reads them as the originals
        images, labels = read_cifar100_split(folder, split)
        want_images, want_labels = read_cifar100_split(source, split)
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert read_cifar100_meta(folder) == read_cifar100_meta(source)


def test_manifest_holds_the_original_arrays_sha256(packed):
    source, _, manifest = packed
    with (source / "train").open("rb") as f:
        content = pickle.load(f, encoding="latin1")
    digests = manifest["splits"]["train"]["sha256"]
    assert digests["data"] == pack_cifar.sha256_bytes(content["data"].tobytes())
    assert digests["fine_labels"] == pack_cifar.sha256_bytes(np.array(content["fine_labels"], "<i8").tobytes())
    assert manifest["files"]["meta"]["sha256"] == pack_cifar.sha256_file(source / "meta")


def test_a_damaged_chunk_is_named_before_anything_is_decoded(packed, tmp_path):
    _, pack_dir, _ = packed
    chunk = pack_dir / "cifar100-2of2.zip"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(pack_cifar.PackError, match=r"2of2\.zip is damaged or from another pack.*copy it again"):
        pack_cifar.unpack(pack_dir, pack_dir / "manifest.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_chunk_is_named(packed, tmp_path):
    _, pack_dir, _ = packed
    (pack_dir / "cifar100-1of2.zip").unlink()
    with pytest.raises(pack_cifar.PackError, match=r"chunk cifar100-1of2\.zip is missing"):
        pack_cifar.unpack(pack_dir, pack_dir / "manifest.json", tmp_path / "out")


def test_decoded_images_that_differ_from_the_packed_ones_are_refused(packed, tmp_path):
    # a chunk whose sha256 the manifest was made to accept, but whose strip holds other pixels: the check of
    # the decoded array catches what a lossy decoder would do
    _, pack_dir, manifest = packed
    chunk = pack_dir / "cifar100-2of2.zip"
    with zipfile.ZipFile(chunk) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in members if n.startswith("test/"))
    images = pack_cifar.decode_strip(members[name], name)
    images[0, 0] ^= 1
    members[name] = pack_cifar.encode_strip(images)
    with zipfile.ZipFile(chunk, "w") as archive:
        for member, blob in members.items():
            archive.writestr(member, blob)
    entry = next(c for c in manifest["chunks"] if c["name"] == chunk.name)
    entry.update(bytes=chunk.stat().st_size, sha256=pack_cifar.sha256_file(chunk))
    (pack_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(pack_cifar.PackError, match=r"test: the decoded images .* differ from the packed ones"):
        pack_cifar.unpack(pack_dir, pack_dir / "manifest.json", tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("label", r"test: the arrays \['fine_labels'\] differ from the original's"),
        ("protocol", r"test: sha256 differs from the original file's"),  # same arrays, other bytes
        ("delete", r"lacks \['test'\]"),
    ],
)
def test_verify_refuses_a_folder_that_differs(packed, tmp_path, change, message):
    _, pack_dir, _ = packed
    folder = pack_cifar.unpack(pack_dir, pack_dir / "manifest.json", tmp_path / "out")
    with (folder / "test").open("rb") as f:
        content = pickle.load(f, encoding="latin1")
    if change == "label":
        content["fine_labels"][0] = (content["fine_labels"][0] + 1) % 100
    with (folder / "test").open("wb") as f:
        pickle.dump(content, f, protocol=4 if change == "protocol" else 2)
    if change == "delete":
        (folder / "test").unlink()
    with pytest.raises(pack_cifar.PackError, match=message):
        pack_cifar.verify(folder, pack_dir / "manifest.json")


def test_chunk_count_and_size_limit_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(pack_cifar, "IMAGES_PER_STRIP", 20)
    source = write_cifar100(tmp_path / "src", train_per_class=2, test_per_class=1)  # noise: 3 kB an image
    manifest = pack_cifar.pack(source, tmp_path / "three", chunks=3, jobs=1)
    sizes = [c["bytes"] for c in manifest["chunks"]]
    assert sorted(p.name for p in (tmp_path / "three").glob("*.zip")) == [f"cifar100-{i}of3.zip" for i in (1, 2, 3)]
    assert max(sizes) - min(sizes) < 0.25 * max(sizes)  # shared out evenly

    limit = sum(sizes) // 2 - 100  # two chunks of the same data: one must hold at least half of it
    with pytest.raises(pack_cifar.PackError, match=rf"exceed the limit of {limit} bytes: pack into more chunks"):
        pack_cifar.pack(source, tmp_path / "two", chunks=2, chunk_bytes=limit, jobs=1)
    assert not list((tmp_path / "two").glob("*.zip"))  # nothing half-written is left to be carried
    assert not (tmp_path / "two" / "manifest.json").exists()


def test_missing_webp_support_stops_with_the_fix(packed, tmp_path, monkeypatch):
    _, pack_dir, _ = packed
    monkeypatch.setattr(pack_cifar.features, "check", lambda feature: False)
    with pytest.raises(pack_cifar.PackError, match=r"without WebP .* install a Pillow wheel"):
        pack_cifar.unpack(pack_dir, pack_dir / "manifest.json", tmp_path / "out")


def test_cli_pack_unpack_verify(tmp_path, capsys):
    source = write_cifar100(tmp_path / "src", train_per_class=1, test_per_class=1)
    pack_cifar.main(["pack", str(source), str(tmp_path / "pack"), "--jobs", "1"])
    pack_cifar.main(["unpack", str(tmp_path / "pack"), str(tmp_path / "pack" / "manifest.json"), str(tmp_path)])
    pack_cifar.main(["verify", str(tmp_path / "cifar-100-python"), str(tmp_path / "pack" / "manifest.json")])
    out = capsys.readouterr().out
    assert "cifar100-2of2.zip:" in out and out.count("equals the original") == 2
