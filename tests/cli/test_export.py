"""sdd-export: the student alone as .pth and .safetensors that round-trip exactly, with a truthful model card."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.app import TINY, compose_config, read_results, subprocess_env
from omegaconf import OmegaConf
from safetensors import safe_open

from sdd_lightning import builders
from sdd_lightning.cli import export as export_module
from sdd_lightning.cli.evaluate import evaluate_command
from sdd_lightning.cli.export import export_student, main
from sdd_lightning.cli.train import train
from sdd_lightning.models import build_model, load_weights
from sdd_lightning.reporting.model_card import read_model_card


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny SD-KD run (a random teacher is enough to export its student)."""
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [*TINY, "distill=sd_kd", "teacher.arch=small_cnn", "teacher.allow_random=true", "epochs=1"]
    train(compose_config(overrides, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def checkpoint_student(run: Path) -> torch.nn.Module:
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    return load_weights(build_model("tiny_cnn", 16), best).eval()


def loaded(card: dict, path: Path) -> torch.nn.Module:
    arch = card["architecture"]
    return load_weights(build_model(arch["arch"], arch["num_classes"], **arch["kwargs"]), path, strict=True).eval()


@pytest.fixture(scope="module")
def fp32(run, tmp_path_factory) -> Path:
    return export_student(run, output_dir=tmp_path_factory.mktemp("fp32"), command="sdd-export <run>")


def test_fp32_files_round_trip_to_identical_logits(run, fp32, images):
    card = json.loads(fp32.read_text())
    expected = checkpoint_student(run)(images)
    for name in ("tiny_cnn-synthetic-sd_kd.safetensors", "tiny_cnn-synthetic-sd_kd.pth"):
        assert torch.equal(loaded(card, fp32.parent / name)(images), expected), name
    # the .pth is a plain state_dict that plain PyTorch loads without this package's loader
    state_dict = torch.load(fp32.parent / "tiny_cnn-synthetic-sd_kd.pth", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state_dict.values())
    assert not any(key.startswith(("model.", "teacher.")) for key in state_dict)
    model = build_model("tiny_cnn", 16)
    model.load_state_dict(state_dict, strict=True)
    assert torch.equal(model.eval()(images), expected)


def test_card_says_what_the_files_are(run, fp32):
    card = read_model_card(fp32.with_suffix(".safetensors"))
    assert card == read_model_card(fp32.with_suffix(".pth")) == json.loads(fp32.read_text())
    results = read_results(run)
    assert card["architecture"] == {"arch": "tiny_cnn", "kwargs": {}, "num_classes": 16, "parameters": 24_736}
    assert card["accuracy"]["acc1"] == pytest.approx(results["test/acc1"], abs=1e-9)  # measured by sdd-eval
    assert card["accuracy"]["split"] == "test" and card["accuracy"]["images"] == 128
    assert card["data"]["name"] == "SyntheticDataModule" and card["data"]["classes"][0] == "disk"
    assert card["teacher"]["arch"] == "small_cnn" and card["teacher"]["acc1"] == results["teacher/acc1"]
    assert card["method"]["name"] == "sd_kd" and card["method"]["settings"]["scales"] == [1, 2, 4]
    assert card["training"]["command"].startswith("sdd-train ") and "distill=sd_kd" in card["training"]["command"]
    assert card["export"] == card["export"] | {"command": "sdd-export <run>", "dtype": "fp32"}
    for entry in card["files"]:
        data = (fp32.parent / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert "build_model('tiny_cnn', num_classes=16)" in card["usage"]["sdd_lightning"]
    markdown = fp32.with_suffix(".md").read_text()
    assert all(entry["sha256"] in markdown for entry in card["files"])
    assert f"{100 * card['accuracy']['acc1']:.2f}" in markdown and "load_state_dict" in markdown


def test_fp16_export_is_half_precision_and_close(run, tmp_path, images):
    card = json.loads(export_student(run, output_dir=tmp_path, dtype="fp16", measure=False).read_text())
    assert card["name"] == "tiny_cnn-synthetic-sd_kd-fp16" and card["accuracy"] is None
    path = tmp_path / "tiny_cnn-synthetic-sd_kd-fp16.safetensors"
    with safe_open(path, "pt") as handle:
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118 (not a dict)
        assert handle.metadata() == {"arch": "tiny_cnn", "num_classes": "16", "dtype": "fp16"}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    expected = checkpoint_student(run)(images)
    for suffix in (".safetensors", ".pth"):
        logits = loaded(card, path.with_suffix(suffix))(images)
        torch.testing.assert_close(logits, expected, rtol=1e-2, atol=1e-2)


def test_sdd_eval_reads_the_card_beside_exported_weights(fp32, tmp_path):
    card = read_model_card(fp32.with_suffix(".pth"))
    report = evaluate_command([str(fp32.with_suffix(".pth")), "--output", str(tmp_path / "report.json")])
    assert report["acc1"] == card["accuracy"]["acc1"] and report["arch"] == "tiny_cnn"


def test_command_line_and_bad_input(run, tmp_path, capsys):
    code = main(
        [str(run / "checkpoints" / "last.ckpt"), "--output-dir", str(tmp_path), "--name", "student", "--no-measure"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "student.safetensors  sha256 " in out and "accuracy not measured" in out
    assert read_model_card(tmp_path / "student.safetensors")["training"]["checkpoint"].endswith("last.ckpt")
    assert main([str(tmp_path / "no_run"), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdd-export: error: ") and "does not exist" in err
    with pytest.raises(FileNotFoundError, match=r"no model card .*other\.pth"):
        read_model_card(tmp_path / "other.pth")


def test_data_overrides_compose_as_in_sdd_train(run, tmp_path, capsys):
    """The card's data config is the data node sdd-train composes from the same overrides; a key the data config
    lacks is refused with Hydra's own message, exit status 2."""
    assert export_module.build_datamodule is builders.build_datamodule
    changes = ["data.eval_batch_size=50", "+data.padding=2"]
    card = json.loads(export_student(run, output_dir=tmp_path, overrides=changes, measure=False).read_text())
    composed = compose_config([*TINY, *changes]).data
    assert card["data"]["config"] == OmegaConf.to_container(composed, resolve=True)
    assert main([str(run), "--output-dir", str(tmp_path / "other"), "--no-measure", "data.padding=2"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "sdd-export: error: Could not override 'data.padding'.\nTo append to your config use +data.padding=2\n"
    )
    assert not (tmp_path / "other").exists()


def test_two_exports_are_byte_identical_and_follow_the_umask(run, fp32, tmp_path):
    """The same checkpoint exported again (under another umask, into another folder) gives the same bytes."""
    old_umask = os.umask(0o027)
    try:
        again = export_student(run, output_dir=tmp_path, command="sdd-export <run>")
    finally:
        os.umask(old_umask)
    names = sorted(path.name for path in fp32.parent.iterdir())
    assert names == sorted(path.name for path in tmp_path.iterdir())  # no temporary left behind
    assert {Path(name).suffix for name in names} == {".pth", ".safetensors", ".json", ".md"}
    for name in names:
        assert (fp32.parent / name).read_bytes() == (again.parent / name).read_bytes(), name
        assert (fp32.parent / name).stat().st_mode & 0o777 == 0o666 & ~old_umask, name
        assert (again.parent / name).stat().st_mode & 0o777 == 0o640, name


def test_model_card_gives_the_recipe_in_words(fp32):
    markdown, card = fp32.with_suffix(".md").read_text(), read_model_card(fp32.with_suffix(".pth"))
    assert not any(
        word in text for text in (markdown, json.dumps(card["method"])) for word in ("_target_", "_partial_")
    )
    assert "${" not in markdown and "sdd_lightning.training.module" not in markdown and "DataModule" not in markdown
    for row in (
        "| method | SD-KD: scale decoupled distillation",
        "| teacher -> student | small_cnn -> tiny_cnn |",
        "| temperature T | 4 |",
        "| loss weights | cross-entropy 0.1, distillation 0.9 |",
        "| scales M | {1, 2, 4} (grid sides of the regions) |",
        "| beta (weight of complementary regions) | 2 (consistent regions: 1; consistency by correctness",
        "| epochs | 1 |",
        "| batch size | 64 |",
        "| learning rate | 0.05 (SGD, momentum 0.9, weight decay 0.0005), x0.1 at epochs 150, 180, 210 |",
    ):
        assert row in markdown, row
    assert card["recipe"] | {"epochs": 1, "batch_size": 64, "lr": 0.05} == card["recipe"]
    assert card["method"]["settings"]["loss"] == {"temperature": 4.0, "standardize": False}
    assert "logit standardization" not in markdown  # said only where it is on


def denied_in(folder: Path):
    """``os.open`` refusing new files in ``folder``, as a folder without write permission does for a non-root user."""
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    return refuse


@pytest.mark.parametrize("problem", ["read-only folder", "file in the way", "full disk"])
def test_an_unwritable_output_folder_is_one_short_message(run, tmp_path, capsys, monkeypatch, problem):
    folder = tmp_path / "ship"
    folder.mkdir()
    (folder / "student.pth").write_bytes(b"an earlier export")
    if problem == "read-only folder":
        if os.geteuid() == 0:  # root writes into a folder whatever its mode
            monkeypatch.setattr(os, "open", denied_in(folder))
        else:
            folder.chmod(0o500)
    elif problem == "file in the way":
        folder = folder / "student.pth" / "export"
    else:

        def full_disk(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
    code = main([str(run), "--output-dir", str(folder), "--name", "student", "--no-measure"])
    tmp_path.joinpath("ship").chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 2, err
    assert err.startswith(f"sdd-export: error: cannot write {folder}") and "--output-dir DIR" in err
    assert ("free some space" in err) == (problem == "full disk")
    # nothing half-written, no temporary left, the earlier file untouched
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["student.pth"]
    assert (tmp_path / "ship" / "student.pth").read_bytes() == b"an earlier export"
    monkeypatch.setenv("SDD_DEBUG", "1")  # the full traceback instead
    with pytest.raises(Exception, match="cannot write"):
        main([str(run), "--output-dir", str(folder), "--name", "student", "--no-measure"])


def test_console_script_exits_0_and_prints_only_its_result(run, tmp_path):
    """As the generated ``sdd-export`` wrapper runs it: ``sys.exit(main())``."""
    command = "import sys; from sdd_lightning.cli.export import main; sys.exit(main())"
    args = [str(run), "--output-dir", str(tmp_path), "--no-measure"]
    done = subprocess.run([sys.executable, "-c", command, *args], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("sha256") == 2 and "accuracy not measured" in done.stdout
