"""The names user code imports from ``sdd_lightning`` itself, and the cheap ``import sdd_lightning``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from helpers.app import subprocess_env

import sdd_lightning


@pytest.mark.parametrize("name", [n for n in sdd_lightning.__all__ if n != "__version__"])
def test_every_public_name_is_the_object_of_its_module(name):
    value = getattr(sdd_lightning, name)
    assert value is getattr(importlib.import_module(sdd_lightning._PUBLIC[name]), name)
    assert name in dir(sdd_lightning)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'DistilationModule'"):
        sdd_lightning.DistilationModule  # noqa: B018


def test_importing_the_package_loads_no_torch():
    code = "import sys, sdd_lightning; print('torch' in sys.modules, sdd_lightning.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=subprocess_env()
    ).stdout.split()
    assert out == ["False", sdd_lightning.__version__]
