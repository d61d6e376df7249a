"""Data set names -> data module classes; every data module names itself.

A :class:`~sdd_lightning.data.base.ClassificationDataModule` subclass that sets the class attribute ``name``
(``name = "cifar100"``) is registered under it when Python creates the class; a subclass that leaves ``name``
alone carries its parent's name but is not registered in its place. A second class under a taken name is
refused with a ``ValueError``.

The name is the data set's option in the configs: ``data=<name>`` selects ``conf/data/<name>.yaml``, whose
``_target_`` is the class that carries that name (``tests/data/test_data_registration.py`` checks both ways:
every option names its class, every registered class has its option). The config stays the user's choice;
the name lets code tell which data set a run used from its ``data._target_`` (:func:`datamodule_name`).

A new data set is one module under ``data/`` whose data module sets ``name``, exported from
``sdd_lightning.data`` (importing the package registers its modules), plus ``conf/data/<name>.yaml``.
"""

from __future__ import annotations

import importlib
import re
from typing import TypeVar

from sdd_lightning.errors import did_you_mean

__all__ = ["available_datamodules", "datamodule_class", "datamodule_name", "register_datamodule"]

_DATAMODULES: dict[str, type] = {}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_Class = TypeVar("_Class", bound=type)


def register_datamodule(cls: _Class) -> _Class:
    """Registers ``cls`` under its ``name``; ``ClassificationDataModule`` calls it for every subclass that sets one.

    Raises:
        ValueError: ``name`` is not a config file name (letters, digits, ``_``, ``-``) or another class has it.
    """
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{_qualified(cls)}.name = {name!r}: a data module's name is the option of its config "
            "conf/data/<name>.yaml: letters, digits, '_' and '-'"
        )
    known = _DATAMODULES.get(name)
    if known is not None and _qualified(known) != _qualified(cls):
        raise ValueError(
            f"data module name {name!r} is already taken by {_qualified(known)}; give {_qualified(cls)} "
            "another name (and its config conf/data/<that name>.yaml)"
        )
    _DATAMODULES[name] = cls
    return cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _registered() -> dict[str, type]:
    importlib.import_module("sdd_lightning.data")  # the package imports every built-in data module
    return dict(sorted(_DATAMODULES.items()))


def available_datamodules() -> list[str]:
    """The registered data set names, sorted (``["cifar100", "cub200", "imagenet", "synthetic"]``)."""
    return list(_registered())


def datamodule_class(name: str) -> type:
    """The data module class registered as ``name``; an unknown name fails with close and known names."""
    registered = _registered()
    try:
        return registered[name]
    except KeyError:
        hint = did_you_mean(name, registered, any_case=False)
        raise ValueError(f"unknown data set {name!r}.{hint} Known data sets: {', '.join(registered)}") from None


def datamodule_name(target: str | type) -> str | None:
    """The name a data module carries, from its class or its dotted ``_target_``; ``None`` when it has none.

    ``"sdd_lightning.data.Cifar100DataModule"`` -> ``"cifar100"``; a subclass carries its parent's name; a
    class from elsewhere, or a path that does not import, gives ``None``.
    """
    if isinstance(target, str):
        module_name, _, attribute = target.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError):
            return None
    from sdd_lightning.data.base import ClassificationDataModule

    if not isinstance(target, type) or not issubclass(target, ClassificationDataModule):
        return None
    return target.name
