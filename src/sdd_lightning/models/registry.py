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

How a network gets here: its constructor (a function or class taking ``num_classes``) is decorated where it
is defined, ``@register_model(family="cifar")`` (registered under its own ``__name__``) or
``@register_model("MobileNetV2", family="cifar")`` (under another name); a second constructor under a
taken name is refused with a ``ValueError``. The registry itself holds no table of names. Before its first
look-up it imports every module under ``sdd_lightning.models`` (``pkgutil``), so their decorators have run
whichever module the caller imported first. A new architecture is one file under ``models/`` that decorates its
constructors, and the configs that use it (``student.arch`` / ``teacher.arch`` in a ``conf/pair/`` file).
Names are listed in the order of :data:`ZOO_MODULES` (the built-in zoo's order), then any other module's, each
in the order of definition. A network registered from another package is buildable by name once its module
has been imported, and is listed after the zoo.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from sdd_lightning.errors import did_you_mean

from .adapter import FeatureClassifierAdapter

__all__ = ["ZOO_MODULES", "ModelSpec", "available_models", "build_model", "model_spec", "register_model"]

ADAPTER_PREFIXES = ("torchvision:", "timm:")

ZOO_MODULES = (
    "cifar.resnet",
    "cifar.resnetv2",
    "cifar.wrn",
    "cifar.vgg",
    "cifar.mobilenetv2",
    "cifar.shufflenetv1",
    "cifar.shufflenetv2",
    "imagenet.resnet",
    "imagenet.mobilenetv1",
    "tiny",
)
"""The built-in zoo's modules (relative to ``sdd_lightning.models``), in the order :func:`available_models` lists
their names; a module not listed here is found all the same, and listed after these."""


_discovered = False


def _import_zoo() -> None:
    """Imports every module of ``sdd_lightning.models`` once, so that every decorated constructor is registered."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(__package__)
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{__package__}."):
        importlib.import_module(module.name)
    _discovered = True


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: its name, its constructor and its family."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    """``"cifar"`` (takes ``stem``), ``"imagenet"`` or ``"tiny"``; a new architecture may name its own."""
    options: str | None = None
    """What the constructor accepts besides ``num_classes``, for the message about a wrong keyword."""


_REGISTRY: dict[str, ModelSpec] = {}
_Constructor = TypeVar("_Constructor", bound=Callable[..., nn.Module])


def register_model(
    name: str | None = None, *, family: str, options: str | None = None
) -> Callable[[_Constructor], _Constructor]:
    """Registers the decorated network constructor (function or class) under ``name``, else its ``__name__``.

    Args:
        name: the name :func:`build_model` takes; defaults to the constructor's own name.
        family: groups names for :func:`available_models` (``"cifar"`` networks also take ``stem``).
        options: what the constructor accepts besides ``num_classes``, said when it gets an unknown keyword.

    Returns:
        A decorator that returns the constructor unchanged.

    Raises:
        ValueError: the name is taken by another constructor, is empty, or starts with ``torchvision:`` /
            ``timm:``.
    """
    if not isinstance(family, str) or not family:
        raise ValueError(f"register_model: family must be a non-empty string, got {family!r}")

    def decorate(builder: _Constructor) -> _Constructor:
        registered = builder.__name__ if name is None else name
        if not isinstance(registered, str) or not registered:
            raise ValueError(f"register_model: the name must be a non-empty string, got {registered!r}")
        if registered.startswith(ADAPTER_PREFIXES):
            raise ValueError(
                f"register_model: {registered!r} starts with {registered.split(':')[0]!r}:, which build_model "
                "reserves for the torchvision / timm adapter; choose another name"
            )
        known = _REGISTRY.get(registered)
        if known is not None and _qualified(known.builder) != _qualified(builder):
            raise ValueError(
                f"model name {registered!r} is already registered by {_qualified(known.builder)}; "
                f"{_qualified(builder)} needs another name: @register_model('<new name>', family={family!r})"
            )
        _REGISTRY[registered] = ModelSpec(registered, builder, family, options)
        return builder

    return decorate


def _qualified(builder: Callable[..., Any]) -> str:
    return f"{builder.__module__}.{builder.__qualname__}"


def _registered() -> dict[str, ModelSpec]:
    """The registry in listing order (:data:`ZOO_MODULES`, then definition), the zoo imported first."""
    _import_zoo()
    rank = {f"{__package__}.{module}": index for index, module in enumerate(ZOO_MODULES)}
    ordered = sorted(_REGISTRY.values(), key=lambda spec: rank.get(spec.builder.__module__, len(rank)))
    return {spec.name: spec for spec in ordered}


def available_models(family: str | None = None) -> list[str]:
    """The registered names, optionally of one family (``"cifar"``, ``"imagenet"``, ``"tiny"``).

    ``torchvision:<name>`` and ``timm:<name>`` are accepted by :func:`build_model` too but not listed.
    """
    registered = _registered()
    families = {spec.family for spec in registered.values()}
    if family is not None and family not in families:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(sorted(families))}")
    return [name for name, spec in registered.items() if family is None or spec.family == family]


def model_spec(name: str) -> ModelSpec:
    """The registration of ``name``; an unknown name fails with the list of known names."""
    registered = _registered()
    try:
        return registered[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}.{did_you_mean(name, registered)} Known models: {', '.join(registered)}; "
            "or 'torchvision:<name>' / 'timm:<name>' for any torchvision or timm classification model."
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
    if "." in name and name not in _registered():
        return _import_constructor(name)(num_classes=num_classes, **kwargs)
    spec = model_spec(name)
    try:
        return spec.builder(num_classes=num_classes, **kwargs)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise TypeError(f"{name}: {error}. {_options_hint(spec)}") from None


def _options_hint(spec: ModelSpec) -> str:
    if spec.options is not None:
        return spec.options
    if spec.family == "cifar":
        return "CIFAR networks take num_classes and stem ('cifar' or 'imagenet')."
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
