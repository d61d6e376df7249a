"""The model zoo: shapes, parameter counts, key names, the interface, the registry and the adapter."""

from __future__ import annotations

import copy
import functools
import importlib.util

import pytest
import torch
import torchvision
from torch import nn

from sdd_lightning.method.heads import ScaleDecoupledHead
from sdd_lightning.models import (
    FeatureClassifier,
    FeatureClassifierAdapter,
    Stem,
    available_models,
    build_model,
    get_classifier,
)

# Parameter counts at 100 classes (CIFAR) / 1000 classes (ImageNet), as published (SDD_METHOD.md section 6).
PUBLISHED_CIFAR = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "ResNet18": 11_220_132,
    "ResNet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}
PUBLISHED_IMAGENET = {
    "imagenet_resnet18": 11_689_512,
    "imagenet_resnet34": 21_797_672,
    "imagenet_resnet50": 25_557_032,
    "MobileNetV1": 4_231_976,
}

# (channels, side) of the feature map at 32x32 input (CIFAR stem) and at 224x224 input (ImageNet stem).
CIFAR_MAP = {
    **{f"resnet{d}": (64, 8) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (256, 8),
    "resnet32x4": (256, 8),
    "ResNet18": (512, 4),
    "ResNet50": (2048, 4),
    "wrn_16_1": (64, 8),
    "wrn_16_2": (128, 8),
    "wrn_40_1": (64, 8),
    "wrn_40_2": (128, 8),
    **{f"vgg{d}": (512, 4) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": (1280, 2),
    "ShuffleV1": (960, 4),
    "ShuffleV2": (1024, 4),
}
CUB_SIDE = {name: {8: 28, 4: 14, 2: 7}[side] for name, (_, side) in CIFAR_MAP.items()}
CUB_SIDE.update({f"vgg{d}": 28 for d in (8, 11, 13, 16, 19)})  # VGG keeps its layers: 224 / 8
# Forward passes at 224x224 that take more than about a second on two CPU cores: left to `make test-all`.
HEAVY_AT_224 = {
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet32x4", "ResNet18", "ResNet50",
    "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg11", "vgg13", "vgg16", "vgg19", "ShuffleV1",
}  # fmt: skip


@functools.cache
def cifar_model(name: str, stem: str = "cifar") -> nn.Module:
    """One shared, eval-mode instance per architecture and stem (tests only read it)."""
    torch.manual_seed(0)
    return build_model(name, 100 if stem == "cifar" else 200, stem=stem).eval()


@functools.cache
def meta_model(name: str, stem: str) -> nn.Module:
    """A CIFAR architecture built on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"):
        return build_model(name, 100, stem=stem)


def shapes_of(name: str, stem: str) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in meta_model(name, stem).state_dict().items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_architecture():
    assert set(available_models("cifar")) == set(PUBLISHED_CIFAR)
    assert set(available_models("imagenet")) == set(PUBLISHED_IMAGENET)
    assert set(available_models("tiny")) == {"tiny_cnn", "small_cnn"}
    assert available_models() == available_models("cifar") + available_models("imagenet") + available_models("tiny")


# --------------------------------------------------------------------------------------- CIFAR, 32x32


@pytest.mark.parametrize("name", list(PUBLISHED_CIFAR))
def test_cifar_model_shapes_count_and_interface(name):
    model = cifar_model(name)
    assert count_parameters(model) == PUBLISHED_CIFAR[name]
    assert isinstance(model, FeatureClassifier)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map = model.forward_features(x)
        logits = model(x)
        by_hand = get_classifier(model)(feature_map.mean(dim=(2, 3)))
    channels, side = CIFAR_MAP[name]
    assert feature_map.shape == (2, channels, side, side)
    assert logits.shape == (2, 100)
    torch.testing.assert_close(logits, by_hand, rtol=1e-4, atol=1e-5)
    assert feature_map.min() >= 0, "the feature map is taken after the last ReLU"


def test_scale_decoupled_head_region_zero_is_the_output():
    model = cifar_model("resnet8x4")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        local = ScaleDecoupledHead((1, 2, 4))(model.forward_features(x), get_classifier(model))
        logits = model(x)
    assert local.shape == (2, 21, 100)
    torch.testing.assert_close(local[:, 0], logits)


# Expected state_dict keys, generated from each family's naming rules (not copied from a checkpoint).

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{suffix}" for suffix in BN]


def resnet_keys(depth: int, widths: tuple[int, ...]) -> set[str]:
    keys = ["conv1.weight", *bn("bn1"), "fc.weight", "fc.bias"]
    n = (depth - 2) // 6
    for stage in (1, 2, 3):
        for i in range(n):
            block = f"layer{stage}.{i}"
            keys += [f"{block}.conv1.weight", *bn(f"{block}.bn1"), f"{block}.conv2.weight", *bn(f"{block}.bn2")]
        if stage > 1 or widths[0] != widths[1]:
            keys += [f"layer{stage}.0.downsample.0.weight", *bn(f"layer{stage}.0.downsample.1")]
    return set(keys)


def resnetv2_keys(blocks: tuple[int, ...], bottleneck: bool) -> set[str]:
    keys = ["conv1.weight", *bn("bn1"), "linear.weight", "linear.bias"]
    convs = (1, 2, 3) if bottleneck else (1, 2)
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            block = f"layer{stage}.{i}"
            for c in convs:
                keys += [f"{block}.conv{c}.weight", *bn(f"{block}.bn{c}")]
        if stage > 1 or bottleneck:  # the first block changes stride or channels
            keys += [f"layer{stage}.0.shortcut.0.weight", *bn(f"layer{stage}.0.shortcut.1")]
    return set(keys)


def wrn_keys(depth: int, k: int) -> set[str]:
    keys = ["conv1.weight", *bn("bn1"), "fc.weight", "fc.bias"]
    n = (depth - 4) // 6
    widths = (16, 16 * k, 32 * k, 64 * k)
    for group in (1, 2, 3):
        for i in range(n):
            block = f"block{group}.layer.{i}"
            keys += [*bn(f"{block}.bn1"), f"{block}.conv1.weight", *bn(f"{block}.bn2"), f"{block}.conv2.weight"]
        if widths[group - 1] != widths[group]:
            keys.append(f"block{group}.layer.0.convShortcut.weight")
    return set(keys)


def vgg_keys(convs_per_block: tuple[int, ...]) -> set[str]:
    keys = ["classifier.weight", "classifier.bias"]
    for b, n in enumerate(convs_per_block):
        for j in range(n):
            keys += [f"block{b}.{3 * j}.weight", f"block{b}.{3 * j}.bias", *bn(f"block{b}.{3 * j + 1}")]
    return set(keys)


def mobilenetv2_keys() -> set[str]:
    keys = ["conv1.0.weight", *bn("conv1.1"), "conv2.0.weight", *bn("conv2.1"), "classifier.0.weight"]
    keys.append("classifier.0.bias")
    for group, n in enumerate((1, 2, 3, 4, 3, 3, 1)):
        for i in range(n):
            for conv, norm in ((0, 1), (3, 4), (6, 7)):
                keys += [f"blocks.{group}.{i}.conv.{conv}.weight", *bn(f"blocks.{group}.{i}.conv.{norm}")]
    return set(keys)


def shufflenet_keys(blocks: tuple[int, ...], v2: bool) -> set[str]:
    keys = ["conv1.weight", *bn("bn1"), "linear.weight", "linear.bias"]
    if v2:
        keys += ["conv2.weight", *bn("bn2")]
    for stage, n in enumerate(blocks, start=1):
        units = [5] + [3] * n if v2 else [3] * n  # v2: a down-sampling unit (5 convs) first
        for i, convs in enumerate(units):
            for c in range(1, convs + 1):
                keys += [f"layer{stage}.{i}.conv{c}.weight", *bn(f"layer{stage}.{i}.bn{c}")]
    return set(keys)


EXPECTED_KEYS = {
    **{f"resnet{d}": functools.partial(resnet_keys, d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(resnet_keys, 8, (32, 64, 128, 256)),
    "resnet32x4": functools.partial(resnet_keys, 32, (32, 64, 128, 256)),
    "ResNet18": functools.partial(resnetv2_keys, (2, 2, 2, 2), False),
    "ResNet50": functools.partial(resnetv2_keys, (3, 4, 6, 3), True),
    "wrn_16_1": functools.partial(wrn_keys, 16, 1),
    "wrn_16_2": functools.partial(wrn_keys, 16, 2),
    "wrn_40_1": functools.partial(wrn_keys, 40, 1),
    "wrn_40_2": functools.partial(wrn_keys, 40, 2),
    "vgg8": functools.partial(vgg_keys, (1, 1, 1, 1, 1)),
    "vgg11": functools.partial(vgg_keys, (1, 1, 2, 2, 2)),
    "vgg13": functools.partial(vgg_keys, (2, 2, 2, 2, 2)),
    "vgg16": functools.partial(vgg_keys, (2, 2, 3, 3, 3)),
    "vgg19": functools.partial(vgg_keys, (2, 2, 4, 4, 4)),
    "MobileNetV2": mobilenetv2_keys,
    "ShuffleV1": functools.partial(shufflenet_keys, (4, 8, 4), False),
    "ShuffleV2": functools.partial(shufflenet_keys, (3, 7, 3), True),
}


@pytest.mark.parametrize("name", list(PUBLISHED_CIFAR))
def test_cifar_state_dict_keys_follow_the_original_names(name):
    assert set(cifar_model(name).state_dict()) == EXPECTED_KEYS[name]()


@pytest.mark.parametrize(
    ("name", "classifier_key", "classifier_in"),
    [
        ("resnet32x4", "fc", 256),
        ("wrn_40_2", "fc", 128),
        ("vgg13", "classifier", 512),
        ("ResNet50", "linear", 2048),
        ("ShuffleV1", "linear", 960),
        ("ShuffleV2", "linear", 1024),
        ("MobileNetV2", "classifier.0", 1280),
    ],
)
def test_classifier_is_the_original_layer(name, classifier_key, classifier_in):
    model = cifar_model(name)
    assert get_classifier(model) is model.get_submodule(classifier_key)
    assert model.state_dict()[f"{classifier_key}.weight"].shape == (100, classifier_in)


def test_selected_shapes_match_the_originals():
    """A few shapes that distinguish the architectures' details (kernel sizes, groups, expansions)."""
    shapes = {name: {k: tuple(v.shape) for k, v in cifar_model(name).state_dict().items()} for name in CIFAR_MAP}
    assert shapes["resnet8x4"]["layer1.0.downsample.0.weight"] == (64, 32, 1, 1)
    assert shapes["ResNet50"]["layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["wrn_40_2"]["block1.layer.0.convShortcut.weight"] == (32, 16, 1, 1)
    assert shapes["vgg13"]["block0.0.weight"] == (64, 3, 3, 3)
    assert shapes["ShuffleV1"]["conv1.weight"] == (24, 3, 1, 1)
    assert shapes["ShuffleV1"]["layer1.0.conv1.weight"] == (54, 24, 1, 1)  # ungrouped after the stem
    assert shapes["ShuffleV1"]["layer2.0.conv1.weight"] == (60, 80, 1, 1)  # 3 groups
    assert shapes["ShuffleV2"]["layer1.0.conv4.weight"] == (58, 1, 3, 3)  # depthwise
    assert shapes["MobileNetV2"]["conv1.0.weight"] == (16, 3, 3, 3)
    assert shapes["MobileNetV2"]["blocks.0.0.conv.0.weight"] == (16, 16, 1, 1)  # expansion 1 keeps its 1x1
    assert shapes["MobileNetV2"]["blocks.1.0.conv.3.weight"] == (48, 1, 3, 3)  # 8 channels x T=6, depthwise


# ------------------------------------------------------------------------------ CUB-200: ImageNet stem


@pytest.mark.parametrize("name", list(PUBLISHED_CIFAR))
def test_imagenet_stem_changes_only_the_first_convolution(name):
    cifar_shapes, cub_shapes = shapes_of(name, "cifar"), shapes_of(name, "imagenet")
    assert cifar_shapes.keys() == cub_shapes.keys()
    changed = [key for key in cifar_shapes if cifar_shapes[key] != cub_shapes[key]]
    if name.startswith("vgg"):  # the official recipe keeps VGG's layers
        assert changed == []
    else:
        assert len(changed) == 1
        assert changed[0] == ("conv1.0.weight" if name == "MobileNetV2" else "conv1.weight")
        assert cub_shapes[changed[0]] == (cifar_shapes[changed[0]][0], 3, 7, 7)
        stem_conv = meta_model(name, "imagenet").get_submodule(changed[0].removesuffix(".weight"))
        assert (stem_conv.stride, stem_conv.padding) == ((2, 2), (3, 3))
    if name == "MobileNetV2":
        assert isinstance(meta_model(name, "imagenet").conv1[-1], nn.MaxPool2d)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_AT_224 else n for n in PUBLISHED_CIFAR]
)
def test_cub_variant_at_224(name):
    model = cifar_model(name, "imagenet")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feature_map = model.forward_features(x)
        logits = model.forward_head(feature_map)
    side = CUB_SIDE[name]
    assert feature_map.shape == (1, CIFAR_MAP[name][0], side, side)
    assert logits.shape == (1, 200)


def test_stem_option_is_validated():
    assert build_model("resnet8", 10, stem=Stem.IMAGENET).conv1.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="stem must be one of 'cifar', 'imagenet'"):
        build_model("resnet8", 10, stem="imagnet")


# ------------------------------------------------------------------------------------ ImageNet, 224x224


@pytest.mark.parametrize(
    "name",
    [
        "imagenet_resnet18",
        "MobileNetV1",
        pytest.param("imagenet_resnet34", marks=pytest.mark.slow),
        pytest.param("imagenet_resnet50", marks=pytest.mark.slow),
    ],
)
def test_imagenet_models(name):
    model = build_model(name, 1000).eval()
    assert count_parameters(model) == PUBLISHED_IMAGENET[name]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feature_map = model.forward_features(x)
        logits = model(x)
    assert feature_map.shape[-2:] == (7, 7)
    assert logits.shape == (1, 1000)
    torch.testing.assert_close(logits, get_classifier(model)(feature_map.mean(dim=(2, 3))), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50"])
def test_imagenet_resnets_are_torchvision_key_for_key(name):
    with torch.device("meta"):
        ours = build_model(name, 1000)
        theirs = torchvision.models.get_model(name.removeprefix("imagenet_"))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_imagenet_resnet_equals_torchvision_forward():
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18().eval()
    ours = build_model("imagenet_resnet18", 1000).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_mobilenetv1_key_names():
    keys = set(build_model("MobileNetV1", 1000).state_dict())
    expected = {"fc.weight", "fc.bias", "model.0.0.weight", *bn("model.0.1")}
    for layer in range(1, 14):
        expected |= {f"model.{layer}.0.weight", *bn(f"model.{layer}.1"), f"model.{layer}.3.weight"}
        expected |= set(bn(f"model.{layer}.4"))
    assert keys == expected


def test_pretrained_weights_are_checked_before_download():
    with pytest.raises(ValueError, match="1000-class classifier"):
        build_model("imagenet_resnet18", 200, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="unknown weights"):
        build_model("imagenet_resnet18", 1000, weights="IMAGENET22K")


# -------------------------------------------------------------------------------- registry, tiny networks


@pytest.mark.parametrize(("name", "low", "high"), [("tiny_cnn", 20_000, 50_000), ("small_cnn", 200_000, 900_000)])
def test_tiny_networks(name, low, high):
    model = build_model(name, 100).eval()
    assert low <= count_parameters(model) <= high
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape[-2:] == (8, 8)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert model(torch.randn(2, 3, 20, 28)).shape == (2, 100)  # any input size


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet33'.*resnet32x4.*ShuffleV1.*tiny_cnn"):
        build_model("resnet33", 100)
    with pytest.raises(ValueError, match="Did you mean 'ShuffleV1'"):
        build_model("shufflev1", 100)


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_model("tiny_cnn", 0)
    with pytest.raises(TypeError, match=r"resnet8.*'weights'.*stem"):
        build_model("resnet8", 100, weights="IMAGENET1K_V1")


# --------------------------------------------------------------------------------------------- adapter


def test_adapter_on_torchvision_resnet18_gives_local_logits():
    torch.manual_seed(0)
    adapter = build_model("torchvision:resnet18", 10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        local = ScaleDecoupledHead((1, 2, 4))(adapter.forward_features(x), get_classifier(adapter))
        torch.testing.assert_close(local[:, 0], adapter.model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(local[:, 0], adapter(x))
    assert local.shape == (2, 21, 10)
    assert get_classifier(adapter) is adapter.model.fc


def test_adapter_survives_deepcopy():
    adapter = FeatureClassifierAdapter(torchvision.models.mobilenet_v2(num_classes=5)).eval()
    clone = copy.deepcopy(adapter)
    clone.get_classifier().bias.data.add_(1.0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), adapter(x) + 1.0)  # the copy uses its own classifier
        torch.testing.assert_close(adapter(x), adapter.model(x))


def test_adapter_refuses_a_non_linear_head():
    with torch.device("meta"):
        model = torchvision.models.mobilenet_v3_small(num_classes=10)
    with pytest.raises(TypeError, match="Linear -> Hardswish -> Dropout -> Linear"):
        FeatureClassifierAdapter(model)
    with pytest.raises(TypeError, match="cannot find a feature map"):
        FeatureClassifierAdapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)))


def small_convnext(num_classes: int = 10) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=num_classes)


def test_adapter_convnext_head_norm_is_an_explicit_choice():
    torch.manual_seed(0)
    model = small_convnext().eval()
    with pytest.raises(TypeError, match=r"LayerNorm2d.*head_norm='per_position'"):
        FeatureClassifierAdapter(model)
    adapter = FeatureClassifierAdapter(model, head_norm="per_position").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map = adapter.forward_features(x)
        local = ScaleDecoupledHead((1, 2))(feature_map, get_classifier(adapter))
        torch.testing.assert_close(local[:, 0], adapter(x))
        # LayerNorm per position, then pooling: documented to differ from the original network.
        assert not torch.allclose(adapter(x), model(x), atol=1e-4)
    assert feature_map.shape == (2, 32, 4, 4)


def test_adapter_needs_timm_only_for_timm_models(monkeypatch):
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed")
    with pytest.raises(ImportError, match="pip install"):
        build_model("timm:resnet18", 10)


def test_adapter_on_timm_model():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    adapter = build_model("timm:mobilenetv2_050", 10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        local = ScaleDecoupledHead((1, 2, 4))(adapter.forward_features(x), get_classifier(adapter))
        torch.testing.assert_close(local[:, 0], adapter.model(x), rtol=1e-4, atol=1e-5)
    assert local.shape == (2, 21, 10)


def test_adapter_refuses_timm_heads_that_are_not_linear():
    pytest.importorskip("timm")
    with pytest.raises(TypeError, match="576 channels but the classifier takes 1024"):
        build_model("timm:mobilenetv3_small_100", 10)
    with pytest.raises(TypeError, match="normalises the pooled features"):
        build_model("timm:convnext_atto", 10)


def test_unknown_adapter_names():
    with pytest.raises(ValueError, match="torchvision has no classification model 'resnet19'"):
        build_model("torchvision:resnet19", 10)


def _looks_default_initialised(weight: torch.Tensor) -> bool:
    """PyTorch's default Conv2d/Linear init is uniform within 1/sqrt(fan_in) (std 1/sqrt(3 fan_in)); the original
    CIFAR code's He-normal init (std sqrt(2 / fan_out)) breaks the bound and has another spread."""
    fan_in = weight[0].numel()
    bound = 1 / fan_in**0.5
    return bool(weight.abs().max() <= bound) and abs(weight.std().item() * 3**0.5 / bound - 1) < 0.1


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet32x4", "conv1"), ("ResNet50", "conv1"), ("wrn_40_2", "conv1"), ("MobileNetV2", "conv1.0")],
)
def test_the_imagenet_stem_keeps_pytorchs_default_init_as_in_the_official_cub_code(name, layer):
    torch.manual_seed(0)
    assert _looks_default_initialised(build_model(name, 200, stem="imagenet").get_submodule(layer).weight)
    # the CIFAR stem keeps the He-normal init of the original code
    assert not _looks_default_initialised(build_model(name, 200).get_submodule(layer).weight)


def test_the_cub_vgg_classifier_keeps_pytorchs_default_init():
    torch.manual_seed(0)
    cub, cifar = build_model("vgg13", 200, stem="imagenet").classifier, build_model("vgg13", 200).classifier
    assert _looks_default_initialised(cub.weight) and cub.bias.abs().sum() > 0
    assert not _looks_default_initialised(cifar.weight) and torch.all(cifar.bias == 0)  # N(0, 0.01), zero bias
