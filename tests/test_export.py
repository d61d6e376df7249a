"""sdd-export: the student alone as .pth and .safetensors that round-trip exactly, with a truthful model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from app_helpers import TINY, compose_config, read_results
from safetensors import safe_open

from sdd_lightning.evaluate import main as sdd_eval
from sdd_lightning.export import export_student, main
from sdd_lightning.model_card import read_model_card
from sdd_lightning.models import build_model, load_weights
from sdd_lightning.train import train


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
    report = sdd_eval([str(fp32.with_suffix(".pth")), "--output", str(tmp_path / "report.json")])
    assert report["acc1"] == card["accuracy"]["acc1"] and report["arch"] == "tiny_cnn"


def test_command_line_and_bad_input(run, tmp_path, capsys):
    main([str(run / "checkpoints" / "last.ckpt"), "--output-dir", str(tmp_path), "--name", "student", "--no-measure"])
    out = capsys.readouterr().out
    assert "student.safetensors  sha256 " in out and "accuracy not measured" in out
    assert read_model_card(tmp_path / "student.safetensors")["training"]["checkpoint"].endswith("last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no_run"), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("sdd-export: error: ") and "does not exist" in err
    with pytest.raises(FileNotFoundError, match=r"no model card .*other\.pth"):
        read_model_card(tmp_path / "other.pth")
