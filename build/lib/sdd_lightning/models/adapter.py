"""Gives a torchvision or timm classification model the interface: a feature map and its classifier.

SDD applies a network's classifier to every pooled region of its final feature map, so it needs a model whose
logits are ``classifier(global_average_pool(feature_map))``, where the classifier is one Linear, or a
normalisation of the pooled vector followed by one Linear. :class:`FeatureClassifierAdapter` finds that split
in a model and checks it:

- timm CNNs: ``forward_features`` gives the map and ``get_classifier()`` the Linear; the adapter verifies
  numerically, once, that the model's ``forward_head`` is exactly global average pooling then that Linear.
- timm vision transformers (ViT, DeiT, Eva and the other models with ``num_prefix_tokens`` and a
  ``patch_embed``): the class, register and distillation tokens are dropped and the patch tokens are laid out
  on the patch grid as a ``(B, C, h, w)`` map (for the input's own size when the model was created with
  ``dynamic_img_size=True``). The classifier is the model's own head path: its ``fc_norm`` (a LayerNorm of
  the pooled tokens, when it has one) then its Linear, wrapped as a :class:`NormLinearClassifier`, so every
  region is normalised and classified exactly as the model treats its global average. This needs a head that
  averages the patch tokens (``global_pool='avg'``, verified numerically like the CNN head); a class-token head
  (timm's default ``global_pool='token'``, DeiT, the distilled DeiT's two heads) classifies one token that
  attends to the whole image, and its classifier applied to pooled patch tokens would see inputs unlike any it
  was trained on, so it is refused with a message naming ``global_pool='avg'``.
- timm models whose ``forward_features`` is channels-last (``output_fmt == 'NHWC'``, e.g. Swin, Swin V2): the
  map is permuted to ``(B, C, h, w)``; their final norm acts on every position before pooling, so the head is
  average pooling then the Linear and the adaptation is exact.
- torchvision models: a table of the families whose forward is "trunk -> global average pool -> Linear"
  (ResNet / ResNeXt / Wide ResNet, RegNet, DenseNet, MobileNetV2, EfficientNet, MNASNet, ShuffleNetV2, and
  ConvNeXt with ``head_norm="per_position"``), and the head is inspected layer by layer.

In every case the head's global region equals the model's own output (up to float rounding), and teacher and
student regions are matched by their relative position on the grid, whatever the two grids' sizes (a 7x7 CNN
map and a 14x14 ViT patch grid both give 1 + 4 + 16 regions for scales (1, 2, 4)).

What the adapter does not reproduce: dropout between pooling and the classifier (identity at evaluation; the
adapted network trains without it). What it refuses, with an error that names what it found: a head that is
not linear in the pooled features (MobileNetV3's Linear-Hardswish-Dropout-Linear; timm's MobileNetV3
``conv_head`` after pooling; VGG's three-layer MLP; attention pooling such as ``global_pool='map'``), a
class-token head (above), random patch dropping (``patch_drop_rate`` > 0 leaves no grid), and a CNN's
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

__all__ = ["FeatureClassifierAdapter", "HeadNorm", "NormLinearClassifier"]


class HeadNorm(StrEnum):
    """What the adapter does with a normalisation layer that a model applies after pooling (ConvNeXt)."""

    REFUSE = "refuse"
    """Raise an error: no linear classifier on pooled regions reproduces such a head (the default)."""

    PER_POSITION = "per_position"
    """Apply the normalisation at every position of the feature map, before pooling; changes the outputs."""


class _Layout(StrEnum):
    """How a timm model's ``forward_features`` lays out its output."""

    NCHW = "NCHW"  # a convolutional map (B, C, h, w)
    NHWC = "NHWC"  # a channels-last map (B, h, w, C): Swin and other models with output_fmt == "NHWC"
    TOKENS = "tokens"  # a token sequence (B, prefix + h * w, C): ViT, DeiT, Eva


class NormLinearClassifier(nn.Module):
    """A normalisation of the pooled features, then a Linear: a transformer's head path as one classifier.

    A ViT with ``global_pool='avg'`` computes its logits as ``head(fc_norm(mean of the patch tokens))``. The
    scale-decoupled head calls its classifier on every pooled region, so wrapping ``fc_norm`` and ``head``
    together gives each region the model's own treatment of its global average. Holds the model's modules
    themselves (no copies); exposes ``in_features`` and ``out_features`` like the Linear it ends in.

    Args:
        norm: the normalisation over the last dimension (e.g. ``nn.LayerNorm``).
        linear: the final Linear.
    """

    def __init__(self, norm: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.norm = norm
        self.linear = linear

    @property
    def in_features(self) -> int:
        """Width of the pooled features (the Linear's input)."""
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        """Number of classes (the Linear's output)."""
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., K)`` of pooled features ``(..., C)``."""
        return self.linear(self.norm(x))


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
    For a vision transformer, ``forward_features`` is its patch tokens on the patch grid and ``get_classifier``
    its final norm and Linear (a :class:`NormLinearClassifier`) or its Linear alone.

    Args:
        model: a timm model (CNN, ViT-style transformer with ``global_pool='avg'``, Swin), or a torchvision model
            of a supported family.
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
        self._layout = _Layout.NCHW
        self._prefix_tokens = 0  # class / register / distillation tokens before the patch tokens
        self._head_norm: str | None = None  # a normalisation of the pooled vector, applied to every region
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
        if isinstance(classifier, tuple | list):
            raise TypeError(
                f"{self.name} has {len(classifier)} classifiers ({_describe(classifier)}); a distilled DeiT "
                "classifies its class token and its distillation token with one Linear each and averages their "
                "logits, which no classifier on pooled patch tokens reproduces. Use a model without a distillation "
                "token whose head averages the patch tokens, e.g. timm:deit_tiny_patch16_224 with "
                "global_pool='avg'."
            )
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
        if _has_patch_tokens(self.model):
            self._layout = _Layout.TOKENS
            self._split_timm_tokens()
            head = self._head_path(classifier)
            self._verify_timm_head(lambda f: head(global_average_pool(f)), channels)
            return classifier_name
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            self._layout = _Layout.NHWC
        norm = getattr(getattr(self.model, "head", None), "norm", None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            found = f"{self.name}'s head normalises the pooled features ({type(norm).__name__}) before the Linear"
            self._accept_norm(head_norm, found)
            self._verify_timm_head(lambda f: classifier(norm(F.adaptive_avg_pool2d(f, 1)).flatten(1)), channels)
            self._norm = _qualified_name(self.model, norm)
        else:
            self._verify_timm_head(lambda f: classifier(global_average_pool(f)), channels)
        return classifier_name

    def _split_timm_tokens(self) -> None:
        """Checks that a token model's head averages its patch tokens; records its prefix tokens and head norm."""
        pool = getattr(self.model, "global_pool", None)
        if pool == "token":
            raise TypeError(
                f"{self.name} classifies its class token (global_pool='token'), not the average of its patch "
                "tokens, so its classifier applied to pooled regions of the patch grid would see inputs unlike "
                "any it was trained on. Create it with global_pool='avg' (sdd-train: "
                "+student.kwargs.global_pool=avg or +teacher.kwargs.global_pool=avg): its head then normalises and "
                "classifies the mean of the patch tokens, and every region is pooled the same way. Weights "
                "pretrained with a class-token head need fine-tuning with global_pool='avg' first; or choose a model "
                "pretrained with average pooling (timm's *_gap_* ViTs, e.g. timm:vit_base_patch16_gap_224)."
            )
        if pool != "avg" or getattr(self.model, "attn_pool", None) is not None:
            raise TypeError(
                f"{self.name} pools its tokens with global_pool={pool!r}; SDD applies the classifier to averages "
                "of patch-token regions, which reproduces only an average-pooling head. Create it with "
                "global_pool='avg' (sdd-train: +student.kwargs.global_pool=avg or +teacher.kwargs.global_pool=avg)."
            )
        patch_drop = getattr(self.model, "patch_drop", None)
        if patch_drop is not None and not isinstance(patch_drop, nn.Identity):
            raise TypeError(
                f"{self.name} drops patch tokens at random in training ({type(patch_drop).__name__}), so its "
                "tokens do not form a grid to pool regions from: create it with patch_drop_rate=0."
            )
        self._prefix_tokens = int(self.model.num_prefix_tokens)
        fc_norm = getattr(self.model, "fc_norm", None)
        if isinstance(fc_norm, nn.Module) and not isinstance(fc_norm, nn.Identity):
            self._head_norm = _qualified_name(self.model, fc_norm)

    def _to_model_layout(self, feature_map: torch.Tensor) -> torch.Tensor:
        """A ``(B, C, h, w)`` map laid out as the model's own ``forward_features`` output (random prefix tokens)."""
        if self._layout is _Layout.NHWC:
            return feature_map.permute(0, 2, 3, 1)
        if self._layout is _Layout.TOKENS:
            patches = feature_map.flatten(2).transpose(1, 2)
            prefix = torch.randn(
                patches.shape[0], self._prefix_tokens, patches.shape[2], device=patches.device, dtype=patches.dtype
            )
            return torch.cat([prefix, patches], dim=1)
        return feature_map

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
                actual = self.model.forward_head(self._to_model_layout(feature_map))
                expected = expected_head(feature_map)
            same = actual.shape == expected.shape and torch.allclose(actual, expected, rtol=1e-4, atol=1e-5)
        except Exception as error:  # a head that cannot even take a feature map laid out this way
            raise TypeError(
                f"{self.name}: its forward_head does not take a {self._layout.value} feature map ({error}); only "
                "models whose head is global average pooling + one Linear (after a norm, for transformers) can be "
                "adapted."
            ) from error
        finally:
            self.model.train(was_training)
        if not same:
            tokens = " or averages its class / register tokens too" if self._layout is _Layout.TOKENS else ""
            raise TypeError(
                f"{self.name}: its forward_head is not global average pooling followed by its classifier "
                f"(another pooling type, or extra layers{tokens}); SDD's per-region logits would not match its output."
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
        """The wrapped model's final feature map ``(B, C, h, w)``.

        For a vision transformer: its patch tokens on the patch grid, prefix tokens dropped. For a CNN whose
        head normalises after pooling: with the normalisation moved before pooling, if that was chosen.
        """
        if self._trunk is None:
            feature_map = self.model.forward_features(x)
            if self._layout is _Layout.TOKENS:
                feature_map = self._patch_grid(feature_map, x)
            elif self._layout is _Layout.NHWC:
                feature_map = feature_map.permute(0, 3, 1, 2)
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

    def _patch_grid(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, prefix + h * w, C)`` -> ``(B, C, h, w)`` on the grid of ``images``' size."""
        h, w = self.model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        patches = tokens[:, self._prefix_tokens :]
        if tokens.dim() != 3 or patches.shape[1] != h * w:
            raise ValueError(
                f"{self.name}: forward_features gave {tuple(tokens.shape)}; expected {self._prefix_tokens} prefix "
                f"tokens and {h}x{w} patch tokens for {tuple(images.shape[-2:])} images"
            )
        return patches.unflatten(1, (h, w)).permute(0, 3, 1, 2)

    def _head_path(self, linear: nn.Linear) -> nn.Linear | NormLinearClassifier:
        if self._head_norm is None:
            return linear
        return NormLinearClassifier(self.model.get_submodule(self._head_norm), linear)

    def get_classifier(self) -> nn.Linear | NormLinearClassifier:
        """What the model applies to its pooled features: its final Linear, after its head norm if it has one."""
        return self._head_path(self.model.get_submodule(self._classifier))

    def extra_repr(self) -> str:
        trunk = "forward_features" if self._trunk is None else "+".join(self._trunk)
        if self._layout is _Layout.TOKENS:
            trunk += f" (patch tokens on the grid; {self._prefix_tokens} prefix tokens dropped)"
        elif self._layout is _Layout.NHWC:
            trunk += " (NHWC -> NCHW)"
        relu = ", relu" if self._final_relu else ""
        norm = f", norm={self._norm} (per position)" if self._norm else ""
        head_norm = f"{self._head_norm} -> " if self._head_norm else ""
        return f"name={self.name!r}, features={trunk}{relu}{norm}, classifier={head_norm}{self._classifier}"

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


def _has_patch_tokens(model: nn.Module) -> bool:
    """Whether a timm model's ``forward_features`` is a token sequence: prefix tokens, then a patch grid."""
    patch_embed = getattr(model, "patch_embed", None)
    return isinstance(getattr(model, "num_prefix_tokens", None), int) and callable(
        getattr(patch_embed, "dynamic_feat_size", None)
    )


def _is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and all(
        callable(getattr(model, attr, None)) for attr in ("forward_features", "forward_head", "get_classifier")
    )
