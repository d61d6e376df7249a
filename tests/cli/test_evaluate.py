"""sdd-eval: its numbers equal those of the training run, on every kind of checkpoint file; bad input, one message."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from helpers.app import TINY, compose_config, read_results, subprocess_env
from helpers.fixtures import write_image_folder
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from sdd_lightning import builders
from sdd_lightning.cli import evaluate as evaluate_module
from sdd_lightning.cli import sources
from sdd_lightning.cli.evaluate import _default_regions, evaluate_command, evaluate_networks, main
from sdd_lightning.cli.train import train
from sdd_lightning.errors import ConfigError
from sdd_lightning.method.heads import ScaleDecoupledHead
from sdd_lightning.models import build_model
from sdd_lightning.models.checkpoints import extract_state_dict, read_checkpoint

REAL_ROOT = Path(os.environ.get("SDD_CIFAR100_ROOT", Path(__file__).resolve().parents[3] / "shared" / "data"))
SYNTHETIC = ["data=synthetic", "data.num_train=256", "data.num_val=128"]  # the data of the runs below


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny teacher (distill=none) and an SD-KD student distilled from it (teacher BatchNorm folded)."""
    root = tmp_path_factory.mktemp("runs")
    train(compose_config([*TINY, "student.arch=small_cnn", "epochs=2", "optimizer.lr=0.1"], root / "teacher"))
    teacher_ckpt = root / "teacher" / "checkpoints" / "last.ckpt"
    student = [*TINY, "distill=sd_kd", "teacher.arch=small_cnn", f"teacher.checkpoint={teacher_ckpt}", "epochs=2"]
    train(compose_config([*student, "runtime.fold_teacher_bn=true"], root / "student"))
    return {"teacher": root / "teacher", "student": root / "student"}


def best_checkpoint(run_dir: Path) -> Path:
    return next((run_dir / "checkpoints").glob("best-*.ckpt"))


def evaluate(args: list, tmp_path: Path) -> dict:
    return evaluate_command([*map(str, args), "--output", str(tmp_path / "report.json")])


def failure(args: list, capsys) -> str:
    """The one message sdd-eval prints for bad input (exit status 2)."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdd-eval: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_top1_equals_what_the_training_run_recorded(runs, role, tmp_path):
    results = read_results(runs[role])
    report = evaluate([best_checkpoint(runs[role])], tmp_path)
    assert report["acc1"] == pytest.approx(results["test/acc1"], abs=1e-9)
    assert report["acc5"] == pytest.approx(results["test/acc5"], abs=1e-9)
    assert report["images"] == 128 and report["split"] == "test" and report["data"] == "SyntheticDataModule"
    assert report["part"] == ("network" if role == "teacher" else "student")
    assert json.loads((tmp_path / "report.json").read_text()) == report
    with open(report["per_class_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and rows[0]["name"] == "disk"
    assert sum(int(r["images"]) for r in rows) == 128
    assert sum(int(r["correct"]) for r in rows) == round(report["acc1"] * 128)


def test_run_folder_means_its_best_checkpoint_and_the_report_goes_into_it(runs):
    report = evaluate_command([str(runs["student"])])
    assert Path(report["checkpoint"]).name.startswith("best-")
    assert Path(report["per_class_csv"]).parent == runs["student"] / "eval"


def test_teacher_part_is_the_teacher_the_run_measured(runs, tmp_path):
    """The folded teacher inside the checkpoint, rebuilt by folding a fresh network the same way."""
    report = evaluate([runs["student"] / "checkpoints" / "last.ckpt", "--part", "teacher", "--split", "val"], tmp_path)
    assert report["part"] == "teacher" and report["arch"] == "small_cnn"
    assert report["acc1"] == pytest.approx(read_results(runs["student"])["teacher/acc1"], abs=1e-9)


def test_regions_report_both_networks(runs, tmp_path):
    report = evaluate([best_checkpoint(runs["student"]), "--regions"], tmp_path)
    regions = report["regions"]
    assert regions["scales"] == [1, 2, 4] and set(regions["networks"]) == {"student", "teacher"}
    assert regions["networks"]["student"]["acc1"] == report["acc1"]
    assert regions["networks"]["teacher"]["acc1"] == pytest.approx(read_results(runs["student"])["teacher/acc1"])
    for network in regions["networks"].values():
        assert network["acc1_by_scale"]["1"] == network["acc1"]  # region 0 is the global prediction
        assert set(network["complementary_fraction"]) == {"correctness", "agreement"}
        assert all(0.0 <= value <= 1.0 for value in network["complementary_fraction"].values())


def test_regions_default_to_the_scales_the_run_trained_with(runs, tmp_path):
    """distill.scales, not the pair's SD scale set (a run trained on {1, 2} of a pair whose SD set is {1, 2, 4})."""
    run = shutil.copytree(runs["student"], tmp_path / "run")
    config = yaml.safe_load((run / "config_resolved.yaml").read_text())
    config["distill"]["scales"] = [1, 2]
    assert config["pair_settings"]["sd_scales"] == [1, 2, 4]
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    assert evaluate([run, "--regions"], tmp_path)["regions"]["scales"] == [1, 2]
    # a run without local terms (plain KD: [1]) is measured on its pair's SD scale set
    kd = OmegaConf.create(
        {"distill": {"scales": [1], "pooling": "hierarchical"}, "pair_settings": {"sd_scales": [1, 2]}}
    )
    assert _default_regions(SimpleNamespace(config=kd)) == ((1, 2), "hierarchical")
    assert _default_regions(None) == ((1, 2, 4), "exact")


def settings(datamodule) -> dict:
    """What a data module was built with: its attributes before any data is read."""
    return {key: value for key, value in vars(datamodule).items() if not key.startswith("_") and key != "trainer"}


def test_data_overrides_reach_the_data_module_as_in_sdd_train(runs, tmp_path, monkeypatch):
    """One path from config to objects: the overrides given to sdd-eval build the data module that the same
    overrides build in sdd-train (Hydra composes them, builders.build_datamodule builds it), for a run's own data
    and for a data set named on the command line; the networks come from builders.build_network."""
    assert evaluate_module.build_datamodule is builders.build_datamodule
    assert sources.build_network is builders.build_network
    built, networks = [], []

    def build_datamodule(cfg):
        datamodule = builders.build_datamodule(cfg)
        built.append(settings(datamodule))
        return datamodule

    def build_network(cfg, role, num_classes):
        networks.append((role, cfg[role].arch, num_classes))
        return builders.build_network(cfg, role, num_classes)

    monkeypatch.setattr(evaluate_module, "build_datamodule", build_datamodule)
    monkeypatch.setattr(sources, "build_network", build_network)
    changes = ["data.eval_batch_size=50", "data.val_split=32", "+data.padding=2"]
    evaluate([runs["student"], *changes, "--split", "val", "--regions"], tmp_path)
    assert built == [settings(builders.build_datamodule(compose_config([*TINY, *changes])))]
    assert built[0]["eval_batch_size"] == 50 and built[0]["val_split"] == 32 and built[0]["padding"] == 2
    assert networks == [("student", "tiny_cnn", 16), ("teacher", "small_cnn", 16)]
    state_dict = extract_state_dict(read_checkpoint(best_checkpoint(runs["teacher"])))
    weights = write_as("plain", dict(state_dict), tmp_path / "small_cnn.pth")
    evaluate([weights, "--arch", "small_cnn", *SYNTHETIC, *changes], tmp_path)
    assert built[1] == settings(builders.build_datamodule(compose_config([*SYNTHETIC, *changes])))


def test_an_invalid_data_override_is_refused_as_sdd_train_refuses_it(runs, capsys):
    """Word for word the message sdd-train's composition (Hydra) or builders (ConfigError) give, exit status 2."""
    with pytest.raises(ConfigCompositionException) as hydra:
        compose_config([*TINY, "data.num_vall=64"])
    err = failure([runs["teacher"], "data.num_vall=64"], capsys)
    assert err == f"sdd-eval: error: {hydra.value}\n" and len(err.splitlines()) == 2
    assert "To append to your config use +data.num_vall=64" in err
    with pytest.raises(ConfigError) as refused:
        builders.build_datamodule(compose_config([*TINY, "data.eval_batch_size=0"]))
    assert failure([runs["teacher"], "data.eval_batch_size=0"], capsys) == f"sdd-eval: error: {refused.value}\n"
    err = failure([runs["teacher"], "data=cifar10"], capsys)
    assert "unknown data 'cifar10'. Did you mean 'cifar100'" in err and len(err.splitlines()) == 1
    err = failure([runs["teacher"], "data.num_val=[64,"], capsys)
    assert err.startswith("sdd-eval: error: data.num_val=[64,: ") and len(err.splitlines()) == 1


class MapAsInput(nn.Module):
    """A 'network' whose feature map is its input and whose classifier is the identity: local logits by hand."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(classes, classes)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(classes))
            self.classifier.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))


def test_region_accuracy_and_complementary_fractions_by_hand():
    def image(cells: list[int]) -> torch.Tensor:
        """A 3-class 2x2 map whose cell i votes for class cells[i] (and the global vote is the majority)."""
        votes = torch.zeros(3, 4)
        votes[cells, range(4)] = 1.0
        return votes.view(3, 2, 2)

    x = torch.stack([image([0, 0, 0, 0]), image([1, 1, 1, 0]), image([1, 1, 2, 1])])
    y = torch.tensor([0, 1, 0])
    # image 0: all right. image 1: global right, one cell wrong -> complementary under both rules.
    # image 2: global wrong (1); cell 2 says 2: also wrong, but another class -> complementary only by agreement.
    tally = evaluate_networks({"net": MapAsInput(3)}, [(x, y)], 3, head=ScaleDecoupledHead((1, 2)))["net"].summary()
    assert tally["acc1"] == pytest.approx(2 / 3)
    assert tally["acc1_by_scale"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(7 / 12)}
    assert tally["complementary_fraction"] == {"correctness": pytest.approx(1 / 12), "agreement": pytest.approx(2 / 12)}


def write_as(kind: str, state_dict: dict, path: Path) -> Path:
    if kind == "safetensors":
        save_file(state_dict, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")
    content = {"model": state_dict, "epoch": 240, "opt": argparse.Namespace(model="small_cnn")}
    torch.save(content if kind == "mdistiller" else state_dict, path)
    return path


@pytest.mark.parametrize("kind", ["plain", "mdistiller", "safetensors"])
def test_weight_files_with_arch_and_data_options(runs, kind, tmp_path):
    state_dict = extract_state_dict(read_checkpoint(best_checkpoint(runs["teacher"])))
    path = write_as(kind, dict(state_dict), tmp_path / "small_cnn.pth")
    report = evaluate([path, "--arch", "small_cnn", *SYNTHETIC], tmp_path)
    assert report["acc1"] == pytest.approx(read_results(runs["teacher"])["test/acc1"], abs=1e-9)
    assert report["part"] == "network" and report["num_classes"] == 16


def damaged(tmp_path: Path, runs) -> dict[str, Path]:
    good = best_checkpoint(runs["teacher"]).read_bytes()
    contents = {
        "empty": b"",
        "truncated": good[: len(good) // 3],
        "random": np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
    }
    for name, data in contents.items():
        (tmp_path / f"{name}.pth").write_bytes(data)
    return {name: tmp_path / f"{name}.pth" for name in contents}


def test_bad_inputs_give_one_clear_message(runs, tmp_path, capsys):
    teacher = best_checkpoint(runs["teacher"])
    for name, path in damaged(tmp_path, runs).items():
        err = failure([path, "--arch", "small_cnn", *SYNTHETIC], capsys)
        assert "is unreadable" in err and "weights_only" not in err and "--arch" not in err, (name, err)
    err = failure([teacher, "--arch", "tiny_cnn", *SYNTHETIC], capsys)
    assert "does not fit" in err and "most likely holds a 'small_cnn'" in err and "Fix: --arch" in err
    err = failure([teacher, "--arch", "small_cnn", *SYNTHETIC, "data.num_classes=10"], capsys)
    assert "16 classes" in err and "built for 10: the class count differs" in err
    cifar_network = tmp_path / "tiny_cnn_cifar100.pth"
    torch.save(build_model("tiny_cnn", 100).state_dict(), cifar_network)
    err = failure([cifar_network, "--arch", "tiny_cnn", "data=cifar100", f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert "CIFAR-100 not found" in err and "data.root=" in err
    err = failure([tmp_path / "absent.pth", "--arch", "small_cnn", *SYNTHETIC], capsys)
    assert "does not exist" in err
    err = failure([damaged(tmp_path, runs)["random"]], capsys)
    assert "give its architecture, e.g. --arch" in err
    outside_its_run = tmp_path / "moved.ckpt"
    outside_its_run.write_bytes(teacher.read_bytes())
    err = failure([outside_its_run, "--arch", "small_cnn"], capsys)
    assert "no data set to evaluate on: give data=" in err
    err = failure([teacher, "--arch", "small_cnn", *SYNTHETIC, "epochs=3"], capsys)
    assert "takes data overrides only" in err
    err = failure([teacher, "--part", "teacher"], capsys)
    assert "distill=none checkpoint: it has no teacher" in err


def test_console_script_fails_without_a_traceback(runs, tmp_path):
    """As the generated ``sdd-eval`` wrapper runs it (``sys.exit(main())``), on random bytes: exit status 2 and one
    line that says what is wrong; with ``SDD_DEBUG=1`` the traceback instead."""
    path = damaged(tmp_path, runs)["random"]
    wrapper = "import sys; from sdd_lightning.cli.evaluate import main; sys.exit(main())"
    command = [sys.executable, "-c", wrapper, str(path), "--arch", "small_cnn", *SYNTHETIC]
    bad = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and not bad.stdout
    assert bad.stderr.startswith("sdd-eval: error: checkpoint") and "not a PyTorch checkpoint" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback_and_an_unwritable_report_is_one_message(runs, tmp_path, capsys, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main([str(best_checkpoint(runs["teacher"])), "--output", str(blocked / "report.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sdd-eval: error: cannot write {blocked}") and "--output FILE" in err
    assert len(err.splitlines()) == 2 and "Traceback" not in err
    monkeypatch.setenv("SDD_DEBUG", "1")
    with pytest.raises(Exception, match="does not exist"):
        main([str(tmp_path / "absent.pth"), "--arch", "small_cnn", *SYNTHETIC])


def test_torchvision_weights(tmp_path, monkeypatch):
    """``--weights`` goes through torchvision's weights API (offline here: its download is replaced)."""
    from torchvision.models._api import WeightsEnum

    fetched = []

    def fake_get_state_dict(self, *args, **kwargs):  # a classifier that always says class 7
        fetched.append(str(self))
        state_dict = build_model("imagenet_resnet18", 1000).state_dict()
        state_dict["fc.weight"] = torch.zeros(1000, 512)
        state_dict["fc.bias"] = torch.nn.functional.one_hot(torch.tensor(7), 1000).float()
        return state_dict

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    classes = tuple(f"n{index:08d}" for index in range(1000))
    root = write_image_folder(tmp_path / "imagenet", classes=classes, train_per_class=0, val_per_class=1)
    # crop and resize sizes are not in conf/data/imagenet.yaml: added with +, as sdd-train takes them
    data = ["data=imagenet", f"data.root={root}", "+data.crop_size=32", "+data.resize_size=32", "data.num_workers=0"]
    report = evaluate(["--arch", "imagenet_resnet18", "--weights", "IMAGENET1K_V1", *data, "--split", "val"], tmp_path)
    assert fetched == ["ResNet18_Weights.IMAGENET1K_V1"]
    assert report["images"] == 1000 and report["acc1"] == pytest.approx(1 / 1000)
    assert report["arch_kwargs"] == {"weights": "IMAGENET1K_V1"}


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_ROOT / "cifar-100-python" / "test").is_file(), reason="real CIFAR-100 not present")
def test_real_cifar100(tmp_path):
    """A run on the real CIFAR-100 (a few training steps): sdd-eval's top-1 over the 10,000 test images is the run's."""
    cifar = ["data=cifar100", f"data.root={REAL_ROOT}", "data.device_resident=true", "data.num_workers=0"]
    steps = [
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=1",
        "epochs=1",
    ]
    train(compose_config([*cifar, "student.arch=tiny_cnn", "callbacks=quiet", *steps], tmp_path / "run"))
    report = evaluate([tmp_path / "run"], tmp_path)
    assert report["images"] == 10_000 and report["num_classes"] == 100
    assert report["acc1"] == pytest.approx(read_results(tmp_path / "run")["test/acc1"], abs=1e-9)
    with open(report["per_class_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["name"] == "apple" and {int(r["images"]) for r in rows} == {100}
