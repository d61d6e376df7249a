"""Names -> network constructors: ``build_model("resnet32x4", num_classes=100)``.

Registered names (``available_models()`` lists them):

- CIFAR architectures, spelled as in mdistiller: ``resnet8``, ``resnet14``, ``resnet20``, ``resnet32``,
  ``resnet44``, ``resnet56``, ``resnet110``, ``resnet8x4``, ``resnet32x4``, ``ResNet18``, ``ResNet50``
  (the CIFAR "resnetv2" family), ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``, ``vgg8``, ``vgg11``,
  ``vgg13``, ``vgg16``, ``vgg19`` (all with BatchNorm), ``MobileNetV2`` (width 0.5, mdistiller's
  ``mobile_half``), ``ShuffleV1``, ``ShuffleV2``. Option ``stem="cifar"`` (default, 32x32 input) or
  ``stem="imagenet"`` (224x224 input, the official CUB-200-2011 recipe).
- ImageNet: ``imagenet_resnet18``, ``imagenet_resnet34``, ``imagenet_resnet50`` (torchvision's; option
  ``weights="IMAGENET1K_V1"`` etc. through torchvision's weights API) and ``MobileNetV1`` (mdistiller's
  ImageNet student). mdistiller calls the ImageNet ResNets ``ResNet18`` / ``ResNet34`` / ``ResNet50``, but
  ``ResNet18`` / ``ResNet50`` here are the CIFAR networks of the same names, hence the prefix.
- Small networks for tests and the quickstart: ``tiny_cnn``, ``small_cnn``.
- Your own network by its dotted path (``my_package.nets.MyNet``: a class or function called with
  ``num_classes`` and the keyword arguments); one that lacks ``forward_features`` / ``get_classifier`` is
  trained through a ``DistillationModule`` subclass that overrides ``student_features`` / ``teacher_features``.
- Any torchvision or timm classification model through :class:`FeatureClassifierAdapter`:
  ``torchvision:<name>`` (e.g. ``torchvision:resnet18``) and ``timm:<name>`` (e.g. ``timm:mobilenetv2_100``;
  needs the optional package timm). Keyword arguments go to torchvision / timm, plus ``head_norm``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import cifar, imagenet, tiny
from .adapter import FeatureClassifierAdapter

__all__ = ["ModelSpec", "available_models", "build_model", "model_spec"]

ADAPTER_PREFIXES = ("torchvision:", "timm:")


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: its name, its constructor and its family."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    """``"cifar"`` (takes ``stem``), ``"imagenet"`` or ``"tiny"``."""


def _specs() -> dict[str, ModelSpec]:
    cifar_models = {
        "resnet8": cifar.resnet8,
        "resnet14": cifar.resnet14,
        "resnet20": cifar.resnet20,
        "resnet32": cifar.resnet32,
        "resnet44": cifar.resnet44,
        "resnet56": cifar.resnet56,
        "resnet110": cifar.resnet110,
        "resnet8x4": cifar.resnet8x4,
        "resnet32x4": cifar.resnet32x4,
        "ResNet18": cifar.ResNet18,
        "ResNet50": cifar.ResNet50,
        "wrn_16_1": cifar.wrn_16_1,
        "wrn_16_2": cifar.wrn_16_2,
        "wrn_40_1": cifar.wrn_40_1,
        "wrn_40_2": cifar.wrn_40_2,
        "vgg8": cifar.vgg8,
        "vgg11": cifar.vgg11,
        "vgg13": cifar.vgg13,
        "vgg16": cifar.vgg16,
        "vgg19": cifar.vgg19,
        "MobileNetV2": cifar.mobile_half,
        "ShuffleV1": cifar.ShuffleV1,
        "ShuffleV2": cifar.ShuffleV2,
    }
    imagenet_models = {
        "imagenet_resnet18": imagenet.imagenet_resnet18,
        "imagenet_resnet34": imagenet.imagenet_resnet34,
        "imagenet_resnet50": imagenet.imagenet_resnet50,
        "MobileNetV1": imagenet.MobileNetV1,
    }
    specs = {name: ModelSpec(name, fn, "cifar") for name, fn in cifar_models.items()}
    specs |= {name: ModelSpec(name, fn, "imagenet") for name, fn in imagenet_models.items()}
    specs |= {
        name: ModelSpec(name, fn, "tiny") for name, fn in (("tiny_cnn", tiny.tiny_cnn), ("small_cnn", tiny.small_cnn))
    }
    return specs


_REGISTRY: dict[str, ModelSpec] = _specs()


def available_models(family: str | None = None) -> list[str]:
    """The registered names, optionally of one family (``"cifar"``, ``"imagenet"``, ``"tiny"``).

    ``torchvision:<name>`` and ``timm:<name>`` are accepted by :func:`build_model` too but not listed.
    """
    families = {spec.family for spec in _REGISTRY.values()}
    if family is not None and family not in families:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(sorted(families))}")
    return [name for name, spec in _REGISTRY.items() if family is None or spec.family == family]


def model_spec(name: str) -> ModelSpec:
    """The registration of ``name``; an unknown name fails with the list of known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.6)
        close = close or [known for known in _REGISTRY if known.lower() == name.lower()]
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}; or 'torchvision:<name>' / "
            "'timm:<name>' for any torchvision or timm classification model."
        ) from None


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds a network by name, with ``num_classes`` outputs, randomly initialised unless weights are asked for.

    Args:
        name: a registered name (see the module docstring and :func:`available_models`), or
            ``torchvision:<name>`` / ``timm:<name>``.
        num_classes: classifier outputs.
        **kwargs: passed to the constructor: ``stem`` for CIFAR networks; ``weights`` for the torchvision
            ResNets; torchvision / timm arguments (and ``head_norm``) for adapted models.

    Returns:
        A module with ``forward_features``, ``get_classifier`` and ``forward`` (logits).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if name.startswith("torchvision:"):
        return FeatureClassifierAdapter.from_torchvision(name.removeprefix("torchvision:"), num_classes, **kwargs)
    if name.startswith("timm:"):
        return FeatureClassifierAdapter.from_timm(name.removeprefix("timm:"), num_classes, **kwargs)
    if name not in _REGISTRY and "." in name:
        return _import_constructor(name)(num_classes=num_classes, **kwargs)
    spec = model_spec(name)
    try:
        return spec.builder(num_classes=num_classes, **kwargs)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise TypeError(f"{name}: {error}. {_options_hint(spec)}") from None


def _options_hint(spec: ModelSpec) -> str:
    if spec.family == "cifar":
        return "CIFAR networks take num_classes and stem ('cifar' or 'imagenet')."
    if spec.name.startswith("imagenet_resnet"):
        return "torchvision ResNets take num_classes, weights, progress and torchvision.models.ResNet's arguments."
    return f"{spec.name} takes num_classes only."


def _import_constructor(path: str) -> Callable[..., nn.Module]:
    """``package.module.Name`` -> the callable ``Name`` (a network class or function taking ``num_classes``)."""
    module_name, _, attribute = path.rpartition(".")
    try:
        constructor = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"{path!r} is neither a registered model nor an importable constructor ({error}); give a registered "
            "name, 'torchvision:<name>' / 'timm:<name>', or the dotted path of your own network class"
        ) from None
    if not callable(constructor):
        raise ValueError(f"{path!r} is not callable: give a network class or a function that builds one")
    return constructor
