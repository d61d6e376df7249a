"""Checkpoint loading: mdistiller/CRD files, Lightning checkpoints, plain state_dicts, and refusing unsafe files."""

from __future__ import annotations

import argparse
import os
import pickle
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from helpers.training import quiet_trainer
from torch import nn

from sdd_lightning.errors import CheckpointMismatchError, UnsafeCheckpointError
from sdd_lightning.models import build_model, load_weights

LEGACY = {"_use_new_zipfile_serialization": False}  # the pre-1.6 format the CRD teachers were written in


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trained_like(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """A network with non-default weights and BatchNorm statistics, so that a load is visible."""
    model = build_model(name, num_classes, **kwargs)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    return model


def mdistiller_file(state_dict: dict, path, **save_kwargs) -> str:
    """A teacher file as the CRD / mdistiller trainers write it."""
    checkpoint = {
        "model": state_dict,
        "epoch": 240,
        "accuracy": np.float64(79.42),
        "best_acc": np.float32(79.5),
        "opt": argparse.Namespace(model="resnet8x4", learning_rate=0.05, lr_decay_epochs=[150, 180, 210]),
        "optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.05, momentum=0.9).state_dict(),
    }
    torch.save(checkpoint, path, **save_kwargs)
    return str(path)


@pytest.mark.parametrize("save_kwargs", [{}, LEGACY], ids=["zip", "legacy"])
def test_mdistiller_file_loads_with_identical_weights(tmp_path, save_kwargs):
    source = trained_like("resnet8x4")
    path = mdistiller_file(source.state_dict(), tmp_path / "resnet8x4_vanilla_ckpt_epoch_240.pth", **save_kwargs)
    target = build_model("resnet8x4", 100)
    assert load_weights(target, path) is target
    assert same_weights(source, target)


def test_numpy_1_pickles_load(tmp_path):
    """The CRD teachers were written with numpy 1.x, which pickles scalars as ``numpy.core.multiarray.scalar``."""
    source = trained_like("resnet8")
    path = tmp_path / "numpy2.pth"
    mdistiller_file(source.state_dict(), path, **LEGACY)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data  # the module path numpy 2 writes
    old_path = tmp_path / "numpy1.pth"
    old_path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert same_weights(source, load_weights(build_model("resnet8", 100), old_path))


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, wrapper):
    source = trained_like("ShuffleV1")
    state_dict = {wrapper + key: value for key, value in source.state_dict().items()}
    path = mdistiller_file(state_dict, tmp_path / "wrapped.pth")
    target = load_weights(build_model("ShuffleV1", 100), path)
    assert same_weights(source, target)


def test_lightning_style_checkpoint_takes_the_student_or_the_asked_prefix(tmp_path):
    student, teacher = trained_like("resnet8x4"), trained_like("resnet32x4")
    state_dict = {f"student.{k}": v for k, v in student.state_dict().items()}
    state_dict |= {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    path = tmp_path / "distill.ckpt"
    torch.save({"state_dict": state_dict, "epoch": 3, "pytorch-lightning_version": "2.6.6"}, path)
    assert same_weights(student, load_weights(build_model("resnet8x4", 100), path))
    assert same_weights(teacher, load_weights(build_model("resnet32x4", 100), path, prefix="teacher"))
    assert same_weights(teacher, load_weights(build_model("resnet32x4", 100), path, prefix="teacher."))
    with pytest.raises(ValueError, match=r"no keys start with 'ema\.'.*student\., teacher\."):
        load_weights(build_model("resnet8x4", 100), path, prefix="ema")


def test_lightning_checkpoint_of_this_package_modules(tmp_path):
    """A real checkpoint written by Lightning for a ClassificationModule (``model.*`` keys, optimiser, scheduler)."""

    from sdd_lightning.training.module import ClassificationModule

    torch.manual_seed(0)
    network = build_model("tiny_cnn", 10)
    module = ClassificationModule(
        network,
        num_classes=10,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        scheduler=partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[150, 180]),
    )
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    trainer = quiet_trainer(tmp_path, max_steps=2, max_epochs=None, limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = load_weights(build_model("tiny_cnn", 10), path)
    assert same_weights(network, restored)


def test_plain_state_dict_and_fp16(tmp_path):
    source = trained_like("wrn_16_1")
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}, path)
    target = load_weights(build_model("wrn_16_1", 100), path)
    assert target.fc.weight.dtype == torch.float32
    torch.testing.assert_close(target.fc.weight, source.fc.weight.half().float())


def test_adapter_accepts_the_wrapped_model_state_dict(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    adapter = load_weights(build_model("torchvision:resnet18", 10), path)
    assert same_weights(source, adapter.model)


class RunsCode:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("save_kwargs", [{}, LEGACY], ids=["zip", "legacy"])
def test_file_with_arbitrary_code_is_refused_without_running_it(tmp_path, save_kwargs):
    marker = tmp_path / "was_executed"
    path = tmp_path / "evil.pth"
    torch.save(
        {"model": build_model("tiny_cnn", 10).state_dict(), "payload": RunsCode(str(marker))}, path, **save_kwargs
    )
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*system.*not on the allow-list") as error:
        load_weights(build_model("tiny_cnn", 10), path)
    assert isinstance(error.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_wrong_architecture_names_the_likely_one(tmp_path):
    path = mdistiller_file(trained_like("resnet8x4").state_dict(), tmp_path / "ckpt_epoch_240.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        load_weights(build_model("resnet32x4", 100), path)
    message = str(error.value)
    assert "missing keys" in message and "ckpt_epoch_240.pth" in message
    assert "most likely holds a 'resnet8x4' network (all its tensors match)" in message
    assert "build_model('resnet8x4', num_classes=100)" in message


def test_class_count_and_stem_mismatches_are_diagnosed(tmp_path):
    path = tmp_path / "cub_teacher.pth"
    torch.save({"model": build_model("MobileNetV2", 200, stem="imagenet").state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_weights(build_model("MobileNetV2", 100), path)
    message = str(error.value)
    assert "conv1.0.weight: file (16, 3, 7, 7) vs model (16, 3, 3, 3)" in message
    assert "classifier.0.weight: file (200, 1280) vs model (100, 1280)" in message
    assert "build_model('MobileNetV2', num_classes=200, stem='imagenet')" in message


def test_strict_false_skips_missing_keys_but_not_shape_mismatches(tmp_path):
    source = trained_like("resnet8")
    state_dict = source.state_dict()
    del state_dict["fc.weight"], state_dict["fc.bias"]
    path = tmp_path / "no_fc.pth"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(2\): fc\.weight, fc\.bias"):
        load_weights(build_model("resnet8", 100), path)
    target = load_weights(build_model("resnet8", 100), path, strict=False)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    torch.save(build_model("resnet8", 10).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_weights(build_model("resnet8", 100), path, strict=False)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        load_weights(build_model("tiny_cnn", 10), tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_weights(build_model("tiny_cnn", 10), garbage)
    no_weights = tmp_path / "no_weights.pth"
    torch.save({"epoch": 3, "accuracy": 1.0}, no_weights)
    with pytest.raises(ValueError, match=r"found no state_dict.*'accuracy', 'epoch'"):
        load_weights(build_model("tiny_cnn", 10), no_weights)


def test_keys_under_an_unknown_prefix_suggest_prefix(tmp_path):
    source = trained_like("tiny_cnn", 10)
    path = tmp_path / "other_module.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"under net\.: load one part with prefix='net'"):
        load_weights(build_model("tiny_cnn", 10), path)
    assert same_weights(source, load_weights(build_model("tiny_cnn", 10), path, prefix="net"))


def damaged_files(tmp_path) -> dict[str, object]:
    """A good checkpoint broken in the ways downloads and copies break, plus bytes that never were one."""
    good = tmp_path / "good.pth"
    torch.save({"model": build_model("tiny_cnn", 10).state_dict()}, good)
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": build_model("tiny_cnn", 10).state_dict()}, legacy, **LEGACY)
    files = {
        "empty": b"",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_legacy": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "text": b"not a checkpoint at all",
    }
    generator = np.random.default_rng(0)
    files |= {f"random{i}": generator.integers(0, 256, 4096, dtype=np.uint8).tobytes() for i in range(4)}
    files["random_pickle_header"] = b"\x80\x02" + files["random0"]  # starts like a pickle, then garbage
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pth"
        paths[name].write_bytes(data)
    return paths


def test_unreadable_files_say_so_and_never_suggest_an_unsafe_load(tmp_path):
    from sdd_lightning.errors import UnreadableCheckpointError

    for name, path in damaged_files(tmp_path).items():
        with pytest.raises(UnreadableCheckpointError) as error:
            load_weights(build_model("tiny_cnn", 10), path)
        message = str(error.value)
        assert f"{name}.pth" in message and "is unreadable" in message, message
        expected = {
            "empty": "it is empty (0 bytes)",
            "truncated": "it is a PyTorch file, but truncated or corrupt",
            "truncated_legacy": "it is a PyTorch file, but truncated or corrupt",
        }.get(name, "it is not a PyTorch checkpoint")
        assert expected in message, message
        assert "weights_only" not in message and "architecture" not in message, message


def test_class_count_mismatch_is_named_as_such(tmp_path):
    from sdd_lightning.errors import ClassCountMismatchError

    path = tmp_path / "resnet8_cifar10.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict()}, path)
    with pytest.raises(ClassCountMismatchError) as error:
        load_weights(build_model("resnet8", 100), path)
    assert (error.value.file_classes, error.value.model_classes) == (10, 100)
    message = str(error.value)
    assert "predicts 10 classes and the network was built for 100: the class count differs" in message
    assert "num_classes=10" in message
    # another architecture is not a class-count problem, even when its classifier differs too
    with pytest.raises(CheckpointMismatchError) as error:
        load_weights(build_model("resnet14", 100), path)
    assert not isinstance(error.value, ClassCountMismatchError)


def test_safetensors_files_load_and_damaged_ones_are_unreadable(tmp_path):
    from safetensors.torch import save_file

    from sdd_lightning.errors import UnreadableCheckpointError

    source = trained_like("resnet8", 10)
    path = tmp_path / "resnet8.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}, path)
    target = load_weights(build_model("resnet8", 10), path, strict=True)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=1e-3, atol=1e-3, check_dtype=False)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UnreadableCheckpointError, match=r"truncated\.safetensors.*not a complete \.safetensors"):
        load_weights(build_model("resnet8", 10), truncated)
