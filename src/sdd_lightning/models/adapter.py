"""Gives a torchvision or timm classification model the interface: a feature map and one linear classifier.

SDD applies a network's classifier to every pooled region of its final feature map, so it needs a model whose
logits are ``Linear(global_average_pool(feature_map))``. :class:`FeatureClassifierAdapter` finds that split in
a model and checks it:

- timm models: ``forward_features`` gives the map and ``get_classifier()`` the Linear; the adapter verifies
  numerically, once, that the model's ``forward_head`` is exactly global average pooling then that Linear.
- torchvision models: a table of the families whose forward is "trunk -> global average pool -> Linear"
  (ResNet / ResNeXt / Wide ResNet, RegNet, DenseNet, MobileNetV2, EfficientNet, MNASNet, ShuffleNetV2, and
  ConvNeXt with ``head_norm="per_position"``), and the head is inspected layer by layer.

What the adapter does not reproduce: dropout between pooling and the classifier (identity at evaluation; the
adapted network trains without it). What it refuses, with an error that names what it found: a head that is
not linear in the pooled features (MobileNetV3's Linear-Hardswish-Dropout-Linear; timm's MobileNetV3
``conv_head`` after pooling; VGG's three-layer MLP; vision transformers, which have no feature map), and a
normalisation after pooling (ConvNeXt's LayerNorm) unless ``head_norm="per_position"`` is chosen, which
applies it at every map position before pooling instead. That changes the network's function (LayerNorm is
not linear, so "normalise each position, then average" differs from "average, then normalise"): the adapted
ConvNeXt is then consistent with itself (region 0 of the scale-decoupled head equals its output) but its
outputs differ from the original's, so evaluate a pretrained ConvNeXt teacher before distilling from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifierNet, global_average_pool

__all__ = ["FeatureClassifierAdapter", "HeadNorm"]


class HeadNorm(StrEnum):
    """What the adapter does with a normalisation layer that a model applies after pooling (ConvNeXt)."""

    REFUSE = "refuse"
    """Raise an error: no linear classifier on pooled regions reproduces such a head (the default)."""

    PER_POSITION = "per_position"
    """Apply the normalisation at every position of the feature map, before pooling; changes the outputs."""


# torchvision classification families whose forward is: trunk modules in order (-> ReLU) -> global average
# pool -> flatten -> head. Values: trunk submodule names, whether forward applies a ReLU after the trunk,
# and the name of the head (a Linear, or a Sequential that ends in one). MobileNetV3 is listed so that its
# head is inspected and refused with a message that says what it is.
_TORCHVISION_SPLITS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "ResNet": (("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"), False, "fc"),
    "RegNet": (("stem", "trunk_output"), False, "fc"),
    "DenseNet": (("features",), True, "classifier"),
    "MobileNetV2": (("features",), False, "classifier"),
    "MobileNetV3": (("features",), False, "classifier"),
    "EfficientNet": (("features",), False, "classifier"),
    "MNASNet": (("layers",), False, "classifier"),
    "ShuffleNetV2": (("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), False, "fc"),
    "ConvNeXt": (("features",), False, "classifier"),
}

_SUPPORTED = set(_TORCHVISION_SPLITS) - {"MobileNetV3"}
_NORM_TYPES = ("LayerNorm", "LayerNorm2d")  # normalisations over the channels that a head may apply


def _describe(modules: Sequence[nn.Module]) -> str:
    return " -> ".join(type(m).__name__ for m in modules) or "nothing"


def _qualified_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(model).__name__}")


class FeatureClassifierAdapter(FeatureClassifierNet):
    """Wraps a torchvision or timm classification model so that it has ``forward_features`` / ``get_classifier``.

    The wrapped model is kept as ``self.model`` (state_dict keys ``model.*``; :func:`~sdd_lightning.models.
    load_weights` also accepts the unwrapped model's own state_dict). ``forward`` is
    ``classifier(global_average_pool(forward_features(x)))``; see the module docstring for what that leaves out.

    Args:
        model: a timm model, or a torchvision model of a supported family.
        head_norm: what to do with a normalisation layer between pooling and the classifier
            (:class:`HeadNorm`; ``"refuse"`` by default).
        name: how to call the model in error messages, e.g. ``"torchvision:convnext_tiny"``.

    Raises:
        TypeError: the model has no such split; the message says what was found.
    """

    def __init__(self, model: nn.Module, *, head_norm: HeadNorm | str = HeadNorm.REFUSE, name: str | None = None):
        super().__init__()
        try:
            head_norm = HeadNorm(head_norm)
        except ValueError:
            choices = ", ".join(repr(h.value) for h in HeadNorm)
            raise ValueError(f"head_norm must be one of {choices}, got {head_norm!r}") from None
        self.model = model
        self.name = name or type(model).__name__
        # Submodules are referred to by name, not held as extra attributes, so that copies and pickles of the
        # adapter stay consistent and the state_dict has no duplicate entries.
        self._trunk: tuple[str, ...] | None = None  # None: call model.forward_features
        self._final_relu = False
        self._norm: str | None = None
        if _is_timm_model(model):
            self._classifier = self._split_timm(head_norm)
        else:
            self._classifier = self._split_torchvision(head_norm)

    # ----------------------------------------------------------------------------------------------- splits

    def _split_torchvision(self, head_norm: HeadNorm) -> str:
        family = next(
            (
                cls.__name__
                for cls in type(self.model).__mro__
                if cls.__module__.startswith("torchvision.models") and cls.__name__ in _TORCHVISION_SPLITS
            ),
            None,
        )
        if family is None:
            raise TypeError(
                f"{self.name}: cannot find a feature map + linear classifier split in {type(self.model).__name__}. "
                f"Supported: timm CNNs and torchvision's {', '.join(sorted(_SUPPORTED))}. Otherwise give "
                "the network forward_features() and get_classifier() yourself (see sdd_lightning.models.interface)."
            )
        trunk, final_relu, head_name = _TORCHVISION_SPLITS[family]
        head = self.model.get_submodule(head_name)
        layers = list(head) if isinstance(head, nn.Sequential) else [head]
        found = f"{self.name}'s head after global average pooling is {_describe(layers)}"
        linear_positions = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)]
        if len(linear_positions) != 1 or linear_positions[0] != len(layers) - 1:
            raise TypeError(
                f"{found}: SDD needs a head that is one Linear on the pooled features (its per-region logits apply "
                "that Linear to every region), so this model cannot be adapted exactly. Choose a model whose head "
                "is pooling + one Linear (e.g. torchvision:mobilenet_v2, torchvision:efficientnet_b0, "
                "timm:mobilenetv2_100)."
            )
        norm = None
        for i, layer in enumerate(layers[:-1]):
            if isinstance(layer, nn.Dropout | nn.Flatten):
                continue
            if i == 0 and type(layer).__name__ in _NORM_TYPES:
                norm = f"{head_name}.{i}"
                continue
            raise TypeError(f"{found}: {type(layer).__name__} between pooling and the Linear is not supported.")
        if norm is not None:
            self._accept_norm(head_norm, found)
            self._norm = norm
        self._trunk = trunk
        self._final_relu = final_relu
        return head_name if isinstance(head, nn.Linear) else f"{head_name}.{len(layers) - 1}"

    def _split_timm(self, head_norm: HeadNorm) -> str:
        classifier = self.model.get_classifier()
        if not isinstance(classifier, nn.Linear):
            raise TypeError(
                f"{self.name}: the classifier is {type(classifier).__name__}, not a Linear "
                "(was it created with num_classes=0?)."
            )
        channels = getattr(self.model, "num_features", None)
        if channels != classifier.in_features:
            raise TypeError(
                f"{self.name}: forward_features gives {channels} channels but the classifier takes "
                f"{classifier.in_features} features: the model has layers between pooling and its classifier "
                "(timm's MobileNetV3 applies conv_head + activation to the pooled vector), so SDD's per-region "
                "logits cannot be computed with its classifier alone. Choose a model whose head is pooling + one "
                "Linear (e.g. timm:mobilenetv2_100, timm:efficientnet_b0, timm:resnet18)."
            )
        classifier_name = _qualified_name(self.model, classifier)
        norm = getattr(getattr(self.model, "head", None), "norm", None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            found = f"{self.name}'s head normalises the pooled features ({type(norm).__name__}) before the Linear"
            self._accept_norm(head_norm, found)
            self._verify_timm_head(lambda f: classifier(norm(F.adaptive_avg_pool2d(f, 1)).flatten(1)), channels)
            self._norm = _qualified_name(self.model, norm)
        else:
            self._verify_timm_head(lambda f: classifier(global_average_pool(f)), channels)
        return classifier_name

    def _verify_timm_head(self, expected_head, channels: int) -> None:
        """Checks on a random map that the model's own ``forward_head`` computes ``expected_head``."""
        parameter = next(self.model.parameters(), None)
        if parameter is None or parameter.device.type == "meta":
            return
        feature_map = torch.randn(2, channels, 3, 3, device=parameter.device, dtype=parameter.dtype)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                actual, expected = self.model.forward_head(feature_map), expected_head(feature_map)
            same = actual.shape == expected.shape and torch.allclose(actual, expected, rtol=1e-4, atol=1e-5)
        except Exception as error:  # a head that cannot even take a (B, C, h, w) map, e.g. a transformer's
            raise TypeError(
                f"{self.name}: its forward_head does not take a (B, C, h, w) feature map ({error}); only "
                "convolutional models with global average pooling + one Linear can be adapted."
            ) from error
        finally:
            self.model.train(was_training)
        if not same:
            raise TypeError(
                f"{self.name}: its forward_head is not global average pooling followed by its classifier "
                "(another pooling type, or extra layers); SDD's per-region logits would not match its output."
            )

    def _accept_norm(self, head_norm: HeadNorm, found: str) -> None:
        if head_norm is HeadNorm.REFUSE:
            raise TypeError(
                f"{found}. A normalisation after pooling is not linear, so no linear classifier on pooled regions "
                "reproduces it. Pass head_norm='per_position' to apply it at every map position before pooling "
                "instead; this changes the network's outputs, so evaluate a pretrained model again before using it."
            )

    # -------------------------------------------------------------------------------------------- interface

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's final feature map (with the normalisation moved before pooling, if chosen)."""
        if self._trunk is None:
            feature_map = self.model.forward_features(x)
        else:
            feature_map = x
            for name in self._trunk:
                feature_map = self.model.get_submodule(name)(feature_map)
        if self._final_relu:
            feature_map = F.relu(feature_map)
        if self._norm is not None:
            feature_map = self.model.get_submodule(self._norm)(feature_map)
        if feature_map.dim() != 4:
            raise ValueError(f"{self.name}: expected a (B, C, h, w) feature map, got shape {tuple(feature_map.shape)}")
        return feature_map

    def get_classifier(self) -> nn.Linear:
        """The wrapped model's final Linear."""
        return self.model.get_submodule(self._classifier)

    def extra_repr(self) -> str:
        trunk = "forward_features" if self._trunk is None else "+".join(self._trunk)
        relu = ", relu" if self._final_relu else ""
        norm = f", norm={self._norm} (per position)" if self._norm else ""
        return f"name={self.name!r}, features={trunk}{relu}{norm}, classifier={self._classifier}"

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_torchvision(
        cls, name: str, num_classes: int = 1000, *, head_norm: HeadNorm | str = HeadNorm.REFUSE, **kwargs: Any
    ) -> FeatureClassifierAdapter:
        """Builds ``torchvision.models.get_model(name, num_classes=..., **kwargs)`` and adapts it.

        ``kwargs`` go to torchvision, e.g. ``weights="IMAGENET1K_V1"`` (downloaded by torchvision into its cache
        on first use; needs a network connection; then ``num_classes`` must be the weights' class count).
        """
        import torchvision

        classification = torchvision.models.list_models(module=torchvision.models)
        if name not in classification:
            raise ValueError(
                f"torchvision has no classification model {name!r}; see "
                "torchvision.models.list_models(module=torchvision.models) for the names"
            )
        model = torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
        return cls(model, head_norm=head_norm, name=f"torchvision:{name}")

    @classmethod
    def from_timm(
        cls, name: str, num_classes: int = 1000, *, head_norm: HeadNorm | str = HeadNorm.REFUSE, **kwargs: Any
    ) -> FeatureClassifierAdapter:
        """Builds ``timm.create_model(name, num_classes=..., **kwargs)`` and adapts it (timm is an optional extra).

        ``kwargs`` go to timm, e.g. ``pretrained=True`` (downloaded from the Hugging Face hub on first use).
        """
        try:
            timm = importlib.import_module("timm")
        except ImportError:
            raise ImportError(
                f"timm:{name} needs the optional package timm: pip install 'sdd-lightning[timm]' (or pip install timm)"
            ) from None
        try:
            model = timm.create_model(name, num_classes=num_classes, **kwargs)
        except RuntimeError as error:
            if "Unknown model" not in str(error):
                raise
            raise ValueError(f"timm has no model {name!r}; see timm.list_models() for the names") from None
        return cls(model, head_norm=head_norm, name=f"timm:{name}")


def _is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and all(
        callable(getattr(model, attr, None)) for attr in ("forward_features", "forward_head", "get_classifier")
    )
