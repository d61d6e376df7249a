"""Declarative registration of networks: ``@register_model`` where a constructor is defined, nothing else."""

from __future__ import annotations

import contextlib
import pkgutil
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import sdd_lightning.models as models_package
from sdd_lightning.models import (
    FeatureClassifier,
    FeatureClassifierNet,
    available_models,
    build_model,
    get_classifier,
    model_spec,
    register_model,
    registry,
)
from sdd_lightning.models.cifar import resnet8


@contextlib.contextmanager
def restored_registry() -> Iterator[None]:
    """Whatever a test registers is gone again afterwards."""
    saved = dict(registry._REGISTRY)
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)


class TwoLayerNet(FeatureClassifierNet):
    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc


def test_a_decorated_constructor_becomes_buildable_by_name_and_leaves_with_the_test():
    zoo = available_models()
    with restored_registry():

        @register_model(family="example", options="two_layer_net takes num_classes and width.")
        def two_layer_net(num_classes: int = 10, width: int = 8) -> TwoLayerNet:
            return TwoLayerNet(num_classes, width)

        model = build_model("two_layer_net", 5, width=4)
        assert isinstance(model, TwoLayerNet) and isinstance(model, FeatureClassifier)
        assert get_classifier(model).out_features == 5 and model.conv.out_channels == 4
        spec = model_spec("two_layer_net")
        assert (spec.name, spec.builder, spec.family) == ("two_layer_net", two_layer_net, "example")
        assert available_models("example") == ["two_layer_net"]
        assert available_models() == [*zoo, "two_layer_net"]  # after the zoo, which keeps its order
        with pytest.raises(TypeError, match=r"two_layer_net: .*'depth'. two_layer_net takes num_classes and width"):
            build_model("two_layer_net", 5, depth=3)
    assert available_models() == zoo
    with pytest.raises(ValueError, match="unknown model 'two_layer_net'"):
        build_model("two_layer_net", 5)


def test_a_class_registers_under_another_name():
    with restored_registry():
        assert register_model("two_layer", family="example")(TwoLayerNet) is TwoLayerNet
        assert isinstance(build_model("two_layer", 3), TwoLayerNet)
    assert "two_layer" not in available_models()


def test_a_taken_name_is_refused_with_both_constructors_named():
    with restored_registry():

        def resnet8_variant(num_classes: int = 100) -> TwoLayerNet:
            return TwoLayerNet(num_classes)

        with pytest.raises(
            ValueError,
            match=r"model name 'resnet8' is already registered by sdd_lightning\.models\.cifar\.resnet\.resnet8; "
            r".*resnet8_variant needs another name",
        ):
            register_model("resnet8", family="cifar")(resnet8_variant)
        assert model_spec("resnet8").builder is resnet8
        # The same constructor again (a module imported twice, a reload) is no conflict.
        zoo = available_models()
        register_model(family="cifar")(resnet8)
        assert available_models() == zoo and model_spec("resnet8").builder is resnet8


@pytest.mark.parametrize("name", ["", "timm:two_layer", "torchvision:two_layer"])
def test_a_name_build_model_cannot_reach_is_refused(name):
    with restored_registry(), pytest.raises(ValueError, match="register_model"):
        register_model(name, family="example")(TwoLayerNet)


def test_every_module_that_registers_networks_is_found_without_a_list():
    """build_model finds every architecture module under models/ by itself, whoever imports first; ZOO_MODULES
    only orders the built-in ones, and each module it names registers networks."""
    defining = {model_spec(name).builder.__module__ for name in available_models()}
    on_disk = {m.name for m in pkgutil.walk_packages(models_package.__path__, prefix=f"{models_package.__name__}.")}
    assert {"sdd_lightning.models.cifar.resnet", "sdd_lightning.models.tiny"} <= defining <= on_disk
    zoo = {f"{models_package.__name__}.{module}" for module in registry.ZOO_MODULES}
    assert zoo <= defining, "these ZOO_MODULES register no network"
    listed = available_models()
    assert listed.index("resnet8") < listed.index("MobileNetV2") < listed.index("tiny_cnn")


@pytest.mark.parametrize("name", available_models())
def test_every_registered_network_builds_as_its_spec_says(name):
    spec = model_spec(name)
    assert spec.name == name and name in available_models(spec.family)
    kwargs = {"stem": "imagenet"} if spec.family == "cifar" else {}
    with torch.device("meta"):
        model = spec.builder(num_classes=7, **kwargs)
        built = build_model(name, 7, **kwargs)
    assert type(built) is type(model)
    assert isinstance(built, FeatureClassifier) and get_classifier(built).out_features == 7
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
