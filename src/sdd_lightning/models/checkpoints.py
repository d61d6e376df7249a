"""Loading weights from the checkpoint files people have: ``load_weights(model, path)``.

Understood formats:

- mdistiller / CRD files (e.g. ``resnet32x4_vanilla/ckpt_epoch_240.pth``): a dict whose ``"model"`` entry is the
  state_dict; they also pickle an ``argparse.Namespace``, numpy scalars and an optimiser state.
- Lightning ``.ckpt`` files of this package's modules: ``"state_dict"`` with keys ``model.*`` (the network of a
  ``ClassificationModule``, the student of a ``DistillationModule``) and ``teacher.*``; ``student.*`` where a
  module names it so. The student / model part is taken unless ``prefix=`` says otherwise.
- plain state_dicts, including whole-distiller dicts (``student.*`` / ``teacher.*``), saved with ``torch.save``
  or as ``.safetensors`` files (what ``sdd-export`` writes).

``module.`` (DataParallel / DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``) are stripped.

Files are read with ``torch.load(weights_only=True)``: tensors, containers and primitive values, plus an
allow-list of harmless types those files contain (``argparse.Namespace``; numpy scalars, dtypes and arrays). A
file that needs any other global (a class, a function: anything that could run code while unpickling) is
refused before anything of it is executed, with an :class:`UnsafeCheckpointError` naming the file and the
global. A file that cannot be read at all (empty, truncated, corrupt, or not a checkpoint) raises an
:class:`UnreadableCheckpointError` that says so. When a file does not fit the network, the error lists the missing,
unexpected and shape-mismatched keys and names the registered architecture the file most likely holds; when only
the classifier's class count differs, a :class:`ClassCountMismatchError` says that instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdd_lightning.errors import (
    CheckpointMismatchError,
    ClassCountMismatchError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)

from .interface import get_classifier

__all__ = [
    "CheckpointMismatchError",
    "ClassCountMismatchError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "extract_state_dict",
    "load_weights",
    "read_checkpoint",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NETWORK_PREFIXES = ("student.", "model.")  # in order of preference when no prefix is given
_LIST_LIMIT = 12
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the pre-1.6 format: a pickled magic number
SAFETENSORS_SUFFIX = ".safetensors"


# ------------------------------------------------------------------------------------------------- reading


def _allowed_globals() -> list[Any]:
    """Harmless types found in mdistiller / CRD files, for ``torch.serialization.safe_globals``.

    Entries are objects, or ``(object, "module.name")`` pairs for the names older numpy versions pickled them
    under (``numpy.core`` became ``numpy._core`` in numpy 2).
    """
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # a file with numpy objects then fails with the "unsafe global" message
        return allowed
    from numpy._core import multiarray  # numpy >= 2; the project requires it

    allowed += [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return allowed


def _unreadable(path: Path, what: str) -> UnreadableCheckpointError:
    return UnreadableCheckpointError(
        f"checkpoint {str(path)!r} is unreadable: {what}. Fix: download or copy the file again (compare its size "
        "or checksum with the source's), or give another file."
    )


def _damage(path: Path, error: BaseException) -> str:
    """What is wrong with a file ``torch.load`` failed on, in words (never PyTorch's advice to load it unsafely)."""
    with path.open("rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    if head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC:
        return f"it is a PyTorch file, but truncated or corrupt ({type(error).__name__} while reading it)"
    return "it is not a PyTorch checkpoint (neither the zip format of torch.save nor its legacy format)"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise _unreadable(path, f"it is not a complete .safetensors file ({error})") from None


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickles a checkpoint file safely (``weights_only=True`` plus the allow-list), onto the CPU.

    ``.safetensors`` files are read with the safetensors library (they hold tensors only; nothing to unpickle).

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file needs a global outside the allow-list (nothing of it was executed).
        UnreadableCheckpointError: the file is empty, truncated, corrupt or not a checkpoint at all.
    """
    path = Path(path)
    if not path.is_file():
        where = "a directory, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"checkpoint {str(path)!r}: {where}")
    if path.stat().st_size == 0:
        raise _unreadable(path, "it is empty (0 bytes)")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            offending = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
            if not offending:
                raise _unreadable(path, _damage(path, error)) from None
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {str(path)!r}: it needs {', '.join(offending)}, which is not on the "
                "allow-list of harmless types (tensors, containers, numbers, strings, argparse.Namespace, numpy "
                "scalars / dtypes / arrays). Unpickling it could run arbitrary code, so nothing of it was executed. "
                "If you trust the file, load it yourself with torch.load(weights_only=False) and save only its "
                "state_dict."
            ) from None
        except Exception as error:  # EOFError, RuntimeError (zip reader), ValueError, ...: a damaged file
            raise _unreadable(path, _damage(path, error)) from None


# ---------------------------------------------------------------------------------------- state_dict views


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _rename(state_dict: Mapping[str, torch.Tensor], rename) -> OrderedDict[str, torch.Tensor]:
    """Applies ``rename(key) -> key | None`` (None drops the entry) to the keys and to the version metadata."""
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key is not None:
            renamed[new_key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # module versions, keyed by module path ("" for the root)
        renamed_metadata = OrderedDict()
        for module_path, version in metadata.items():
            new_path = rename(module_path + ".")
            if new_path is not None:
                renamed_metadata[new_path.rstrip(".")] = version
        renamed._metadata = renamed_metadata  # type: ignore[attr-defined]
    return renamed


def _strip_wrappers(key: str) -> str:
    key = key.replace("_orig_mod.", "")
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _sub_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> OrderedDict[str, torch.Tensor]:
    return _rename(state_dict, lambda key: key[len(prefix) :] if key.startswith(prefix) else None)


def _top_level_prefixes(keys: Iterable[str]) -> list[str]:
    return sorted({key.split(".", 1)[0] + "." for key in keys if "." in key})


def extract_state_dict(checkpoint: Any, *, prefix: str | None = None, path: str = "checkpoint") -> dict[str, Any]:
    """The network state_dict inside a loaded checkpoint object, wrapper prefixes stripped.

    Args:
        checkpoint: what :func:`read_checkpoint` returned.
        prefix: take only the keys under this prefix (``"teacher"`` or ``"teacher."``, ``"model"``, ...), with
            the prefix removed. ``None``: the whole state_dict, or, for a Lightning checkpoint or a whole-
            distiller dict, the ``student.`` / ``model.`` part.
        path: the file's name, for error messages.
    """
    lightning = isinstance(checkpoint, Mapping) and "state_dict" in checkpoint
    if lightning:
        state_dict = checkpoint["state_dict"]
    elif isinstance(checkpoint, Mapping) and _is_state_dict(checkpoint.get("model")):
        state_dict = checkpoint["model"]
    elif _is_state_dict(checkpoint):
        state_dict = checkpoint
    else:
        found = (
            f"a dict with keys {sorted(map(str, checkpoint))}"
            if isinstance(checkpoint, Mapping)
            else type(checkpoint).__name__
        )
        raise UnreadableCheckpointError(
            f"{path}: found no state_dict in it ({found}); expected a Lightning checkpoint ('state_dict'), an "
            "mdistiller/CRD file ('model') or a plain state_dict"
        )
    if not _is_state_dict(state_dict):
        raise UnreadableCheckpointError(f"{path}: its state_dict entry is not a mapping of names to tensors")
    state_dict = _rename(state_dict, _strip_wrappers)
    if prefix is not None:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        selected = _sub_dict(state_dict, prefix)
        if not selected:
            raise ValueError(
                f"{path}: no keys start with {prefix!r}; its top-level prefixes are "
                f"{', '.join(_top_level_prefixes(state_dict)) or '(none)'}"
            )
        return selected
    for candidate in _NETWORK_PREFIXES:
        has_student_and_teacher = candidate == "student." and any(k.startswith("teacher.") for k in state_dict)
        if (lightning or has_student_and_teacher) and any(k.startswith(candidate) for k in state_dict):
            return _sub_dict(state_dict, candidate)
    return state_dict


# ------------------------------------------------------------------------------------------------ loading


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _compare(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys, and ``key: file shape vs model shape`` lines."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: file {_shape(state_dict[key])} vs model {expected[key]}"
        for key in expected
        if key in state_dict and _shape(state_dict[key]) != expected[key]
    ]
    return missing, unexpected, mismatched


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT]) + (
        f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    )
    return f"  {title} ({len(items)}): {shown}"


def _prefix_hint(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, Any]) -> str | None:
    """Suggests ``prefix=`` when all the file's keys sit under a few prefixes that the network does not have."""
    prefixes = _top_level_prefixes(state_dict)
    if not prefixes or len(prefixes) > 4 or not all("." in key for key in state_dict):
        return None
    if any(key.startswith(tuple(prefixes)) for key in expected):
        return None
    return f"  All the file's keys are under {', '.join(prefixes)}: load one part with prefix={prefixes[0][:-1]!r}."


def load_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, *, prefix: str | None = None
) -> nn.Module:
    """Loads a checkpoint file's weights into ``model`` (in place) and returns ``model``.

    Args:
        model: the network, built with the architecture and class count of the file.
        path: an mdistiller/CRD ``.pth``, a Lightning ``.ckpt`` of this package, or a saved state_dict
            (``torch.save`` or ``.safetensors``).
        strict: require every key of the network to be in the file and every key of the file to be used. With
            ``strict=False`` missing and unexpected keys are skipped; shapes must match either way.
        prefix: which part of the file to load, e.g. ``"teacher"`` for the teacher of a distillation
            checkpoint; by default the whole state_dict, or the student / ``model.`` part of a Lightning or
            whole-distiller file.

    Tensors are cast to the dtype of the network's own (fp16 files load into fp32 networks).

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file would need an unsafe global to be unpickled.
        UnreadableCheckpointError: the file is empty, truncated, corrupt, not a checkpoint, or holds no weights.
        ClassCountMismatchError: the file fits ``model``'s architecture but has another number of classes.
        CheckpointMismatchError: the file does not fit ``model``; the message lists the differences and names
            the registered architecture the file most likely holds.
    """
    name = str(path)
    state_dict = extract_state_dict(read_checkpoint(path), prefix=prefix, path=name)
    expected = {key: _shape(value) for key, value in model.state_dict().items()}
    missing, unexpected, mismatched = _compare(state_dict, expected)
    if missing and unexpected and all(key.startswith("model.") for key in expected):
        # An adapter (``model.*``) given the state_dict of the model it wraps.
        prefixed = _rename(state_dict, lambda key: "model." + key)
        if len(_compare(prefixed, expected)[0]) < len(missing):
            state_dict = prefixed
            missing, unexpected, mismatched = _compare(state_dict, expected)
    if mismatched and not (strict and (missing or unexpected)):
        _check_class_count(model, state_dict, expected, mismatched, name)
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint {name!r} does not fit {type(model).__name__}:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                lines.append(_listing(title, items))
        hint = _prefix_hint(state_dict, expected)
        if hint:
            lines.append(hint)
        lines.append(_likely_architecture(state_dict, hint=name))
        raise CheckpointMismatchError("\n".join(lines))
    if not strict:
        state_dict = _rename(state_dict, lambda key: key if key in expected else None)
    model.load_state_dict(state_dict, strict=strict)
    return model


def _check_class_count(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    mismatched: list[str],
    name: str,
) -> None:
    """Raises :class:`ClassCountMismatchError` when the classifier's output size is the only difference."""
    try:
        classifier = get_classifier(model)
    except TypeError:
        return  # a network without the interface: the general message describes the difference
    prefix = next(module_name for module_name, module in model.named_modules() if module is classifier)
    keys = {f"{prefix}.weight", f"{prefix}.bias"}
    mismatched_keys = {key for key in expected if key in state_dict and _shape(state_dict[key]) != expected[key]}
    if not mismatched_keys <= keys or any(_shape(state_dict[key])[1:] != expected[key][1:] for key in mismatched_keys):
        return
    file_classes = _shape(state_dict[next(iter(mismatched_keys))])[0]
    model_classes = classifier.out_features
    raise ClassCountMismatchError(
        f"checkpoint {name!r} fits {type(model).__name__}, but its classifier ({prefix}) predicts {file_classes} "
        f"classes and the network was built for {model_classes}: the class count differs.\n"
        f"{_listing('shape mismatches', mismatched)}\nFix: use weights "
        f"trained on the {model_classes}-class data set, or build the network with num_classes={file_classes} "
        f"(and evaluate it on a {file_classes}-class data set).",
        file_classes=file_classes,
        model_classes=model_classes,
    )


# ------------------------------------------------------------------------------------- which architecture?


@functools.cache
def _signature(name: str, stem: str | None) -> tuple[dict[str, tuple[int, ...]], str]:
    """Key -> shape of a registered network built on the meta device (no memory, no init), and its classifier."""
    from .registry import build_model

    kwargs = {} if stem is None else {"stem": stem}
    with torch.device("meta"):
        model = build_model(name, num_classes=1, **kwargs)
    classifier = get_classifier(model)
    classifier_name = next(module_name for module_name, module in model.named_modules() if module is classifier)
    return {key: _shape(value) for key, value in model.state_dict().items()}, classifier_name


def _candidates(hint: str) -> list[tuple[str, str | None]]:
    """Registered (name, stem) pairs; those whose name appears in ``hint`` (the file's path) first.

    mdistiller / CRD files are named after their architecture (``resnet32x4_vanilla/ckpt_epoch_240.pth``), so
    the usual answer is found first and the search stops there.
    """
    from .registry import available_models

    cifar = available_models("cifar")
    candidates: list[tuple[str, str | None]] = []
    for name in cifar:
        candidates += [(name, "cifar"), (name, "imagenet")]
    candidates += [(name, None) for name in available_models() if name not in cifar]
    hint = hint.lower()
    return sorted(candidates, key=lambda candidate: candidate[0].lower() not in hint)


def _match(state_dict: Mapping[str, torch.Tensor], name: str, stem: str | None) -> tuple[float, int, int | None]:
    """Fraction of tensors (of the file and the network together) that agree, matches, and the class count."""
    shapes, classifier = _signature(name, stem)
    weight = state_dict.get(f"{classifier}.weight")
    num_classes = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
    matches = 0
    for key, shape in shapes.items():
        value = state_dict.get(key)
        if value is None:
            continue
        file_shape = _shape(value)
        if key.startswith(classifier + "."):  # the class count is free
            file_shape, shape = file_shape[1:], shape[1:]
        matches += file_shape == shape
    return matches / len(set(shapes) | set(state_dict)), matches, num_classes


def _likely_architecture(state_dict: Mapping[str, torch.Tensor], hint: str) -> str:
    """A sentence naming the registered architecture whose tensors agree best with the file's.

    Each candidate is built once per process on the meta device (shapes only) and cached.
    """
    best: tuple[tuple[float, int, int | None], str, str | None] | None = None
    for name, stem in _candidates(hint):
        if stem == "imagenet" and _signature(name, "imagenet")[0] == _signature(name, "cifar")[0]:
            continue  # VGG: the stem option changes nothing
        result = _match(state_dict, name, stem)
        if best is None or result[0] > best[0][0]:
            best = (result, name, stem)
        if result[0] == 1.0:
            break
    assert best is not None
    (score, matches, num_classes), name, stem = best
    if matches == 0:
        return "  No registered architecture has tensors of these names and shapes."
    if score < 0.5:
        return (
            f"  No registered architecture matches it closely (closest: {name}, {matches} of {len(state_dict)} "
            "tensors agree); it may come from another network."
        )
    options = f"num_classes={num_classes}" + (f", stem={stem!r}" if stem == "imagenet" else "")
    agreement = "all its tensors match" if score == 1.0 else f"{score:.0%} of the tensors match"
    return f"  The file most likely holds a {name!r} network ({agreement}): build_model({name!r}, {options})."
