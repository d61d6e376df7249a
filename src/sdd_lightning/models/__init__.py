"""Networks with one interface (a feature map and a linear classifier), their registry and checkpoint loading.

``build_model(name, num_classes, **kwargs)`` builds any registered network (``available_models()`` lists the
names; ``torchvision:<name>`` / ``timm:<name>`` wrap torchvision and timm models; ``@register_model`` adds one), and
``load_weights(model, path)`` fills it from an mdistiller/CRD ``.pth``, a Lightning ``.ckpt`` or a state_dict.
"""

from .adapter import FeatureClassifierAdapter, HeadNorm
from .base import FeatureClassifierNet
from .checkpoints import (
    CheckpointMismatchError,
    ClassCountMismatchError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    load_weights,
)
from .cifar import Stem
from .interface import FeatureClassifier, get_classifier
from .registry import available_models, build_model, model_spec, register_model

__all__ = [
    "CheckpointMismatchError",
    "ClassCountMismatchError",
    "FeatureClassifier",
    "FeatureClassifierAdapter",
    "FeatureClassifierNet",
    "HeadNorm",
    "Stem",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "available_models",
    "build_model",
    "get_classifier",
    "load_weights",
    "model_spec",
    "register_model",
]
