"""Vision transformers through the adapter: patch tokens as the feature map, the model's own head path per region."""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest
import torch
from helpers.app import TINY, compose_config
from torch import nn

from sdd_lightning.cli.train import train
from sdd_lightning.method.heads import ScaleDecoupledHead
from sdd_lightning.models import build_model, get_classifier
from sdd_lightning.models.adapter import NormLinearClassifier

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the optional package timm")

# Small randomly initialised models on 32x32 input (the synthetic data set's size).
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
VIT_AVG = {**VIT, "global_pool": "avg"}
SWIN = {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)}
SCALES = (1, 2, 4)


def local_logits(adapter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        feature_map = adapter.forward_features(x)
        return feature_map, ScaleDecoupledHead(SCALES)(feature_map, get_classifier(adapter))


@needs_timm
@pytest.mark.parametrize(
    ("name", "kwargs", "image", "grid"),
    [
        pytest.param("vit_tiny_patch16_224", VIT_AVG, (32, 32), (4, 4), id="vit-avg-fc_norm"),
        pytest.param("vit_tiny_patch16_224", {**VIT_AVG, "fc_norm": False}, (32, 32), (4, 4), id="vit-avg-norm"),
        pytest.param(
            "vit_tiny_patch16_224",
            {**VIT_AVG, "reg_tokens": 3, "dynamic_img_size": True},
            (48, 40),
            (6, 5),
            id="vit-registers-dynamic-size",
        ),
        pytest.param("swin_tiny_patch4_window7_224", SWIN, (32, 32), (4, 4), id="swin"),
    ],
)
def test_global_region_is_the_models_own_output(name, kwargs, image, grid):
    torch.manual_seed(0)
    adapter = build_model(f"timm:{name}", 10, **kwargs).eval()
    x = torch.randn(2, 3, *image)
    feature_map, local = local_logits(adapter, x)
    with torch.no_grad():
        own = adapter.model(x)
        adapted = adapter(x)
    assert feature_map.shape == (2, adapter.model.num_features, *grid)
    assert local.shape == (2, 21, 10)
    torch.testing.assert_close(local[:, 0], own, rtol=0, atol=1e-5)
    torch.testing.assert_close(adapted, own, rtol=0, atol=1e-5)


@needs_timm
def test_the_classifier_is_the_models_head_path_and_adds_no_state():
    model_only = build_model("timm:vit_tiny_patch16_224", 10, **VIT_AVG)
    classifier = get_classifier(model_only)
    assert isinstance(classifier, NormLinearClassifier)
    assert classifier.norm is model_only.model.fc_norm and classifier.linear is model_only.model.head
    assert (classifier.in_features, classifier.out_features) == (32, 10)
    assert list(model_only.state_dict()) == [f"model.{key}" for key in model_only.model.state_dict()]
    # without fc_norm the final norm acts on every token before pooling: the classifier is the Linear alone
    plain = build_model("timm:vit_tiny_patch16_224", 10, **VIT_AVG, fc_norm=False)
    assert get_classifier(plain) is plain.model.head


@needs_timm
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        # no transformer block: every token depends on its own patch only
        pytest.param("vit_tiny_patch16_224", {**VIT_AVG, "depth": 0}, id="vit"),
        # one stage, one unshifted block with 4x4 windows on the 8x8 grid: tokens mix within image quadrants only
        pytest.param(
            "swin_tiny_patch4_window7_224", {**SWIN, "depths": (1,), "num_heads": (1,)}, id="swin-one-window-stage"
        ),
    ],
)
def test_regions_sit_where_their_patches_are(name, kwargs):
    """Changing the top-right quarter of the image changes exactly the regions on the top-right of the grid."""
    torch.manual_seed(0)
    adapter = build_model(f"timm:{name}", 10, **kwargs).eval()
    x = torch.randn(1, 3, 32, 32)
    changed = x.clone()
    changed[..., :16, 16:] = torch.randn(1, 3, 16, 16)
    _, before = local_logits(adapter, x)
    _, after = local_logits(adapter, changed)
    moved = (after - before).abs().amax(dim=-1)[0] > 1e-4  # (21,)
    top_right_of_4x4 = {5 + row * 4 + col for row in (0, 1) for col in (2, 3)}
    expected = {0, 1 + 1} | top_right_of_4x4  # global; 2x2 cell (row 0, col 1); 4x4 cells of that quarter
    assert {r for r in range(21) if moved[r]} == expected


@needs_timm
def test_class_token_heads_are_refused_with_the_avg_alternative():
    with pytest.raises(TypeError, match=r"global_pool='token'.*\+student\.kwargs\.global_pool=avg"):
        build_model("timm:deit_tiny_patch16_224", 10, **VIT)
    with pytest.raises(TypeError, match=r"distillation token.*global_pool='avg'"):
        build_model("timm:deit_tiny_distilled_patch16_224", 10, **VIT)
    with pytest.raises(TypeError, match=r"global_pool='map'"):
        build_model("timm:vit_tiny_patch16_224", 10, **VIT, global_pool="map")
    with pytest.raises(TypeError, match="patch_drop_rate=0"):
        build_model("timm:vit_tiny_patch16_224", 10, **VIT_AVG, patch_drop_rate=0.5)


def _last_logged(run_dir, column: str) -> float:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        values = [row[column] for row in csv.DictReader(file) if row.get(column)]
    return float(values[-1])


SHORT = [*TINY, "data.num_train=128", "data.num_val=64", "epochs=1", "distill=sd_kd", "teacher.allow_random=true"]


def overrides(role: str, kwargs: dict) -> list[str]:
    """``+<role>.kwargs.<key>=<value>`` for every key, as on the sdd-train command line."""
    return [f"+{role}.kwargs.{key}={list(v) if isinstance(v, tuple) else v}" for key, v in kwargs.items()]


@needs_timm
def test_sdd_train_cnn_teacher_to_vit_student(tmp_path):
    """The README's command: a CNN's 8x8 map teaches a ViT whose patch grid is 4x4."""
    student = ["student.arch=timm:vit_tiny_patch16_224", *overrides("student", VIT_AVG)]
    results = train(compose_config([*SHORT, "teacher.arch=tiny_cnn", *student], tmp_path))
    assert results["status"] == "finished" and results["global_step"] == 2  # 128 images / 64 per batch
    assert math.isfinite(_last_logged(tmp_path, "train/loss"))


@needs_timm
def test_sdd_train_swin_teacher_to_cnn_student(tmp_path):
    teacher = ["teacher.arch=timm:swin_tiny_patch4_window7_224", *overrides("teacher", SWIN)]
    results = train(compose_config([*SHORT, *teacher], tmp_path))
    assert results["status"] == "finished" and results["global_step"] == 2
    assert math.isfinite(_last_logged(tmp_path, "train/loss"))


def test_get_classifier_takes_a_norm_then_linear_and_refuses_what_has_no_sizes():
    class Net(nn.Module):
        def __init__(self, classifier: nn.Module) -> None:
            super().__init__()
            self.classifier = classifier

    norm_linear = NormLinearClassifier(nn.LayerNorm(8), nn.Linear(8, 3))
    assert get_classifier(Net(norm_linear)) is norm_linear
    with pytest.raises(TypeError, match=r"Net's classifier must be an nn.Linear, or .* in_features and out_features"):
        get_classifier(Net(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))))
