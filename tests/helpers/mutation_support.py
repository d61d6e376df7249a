"""A pytest plugin for ``make mutation`` runs only (``-p mutation_support``; see docs/testing.md).

mutmut runs every mutated function through a trampoline that picks the original or the mutant. Lightning's
``save_hyperparameters`` finds a module's constructor arguments by walking the stack from ``__init__`` to the
callers' ``__init__`` frames, and stops at the first frame that is not one; the trampoline sits between
``ClassificationModule.__init__`` and ``DistillationModule.__init__``, and the constructors run under mutmut's names
(``xǁDistillationModuleǁ__init____mutmut_orig``, ``..._mutmut_3``), so a module would record no hyperparameters.
This plugin lets Lightning's walk step over the trampoline frames and read those names as ``__init__``, so that a
module records the same hyperparameters under mutation as without it.

It also runs a mutant's tests fastest first, by the durations mutmut recorded in its first run: mutmut stops at the
first failure, so a mutant that a quick unit test kills does not wait for the slow builds that also reach it. And it
appends each mutant's wall time to ``mutants/mutant-times.jsonl`` (what docs/testing.md's time estimates come from).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
import types
from pathlib import Path
from typing import Any

import lightning.pytorch.utilities.parsing as parsing
from mutmut.mutation import trampoline

_TRAMPOLINE_FILE = str(Path(trampoline.__file__).resolve())
_MUTATED_INIT = re.compile(r"xǁ\w+ǁ__init____mutmut_(orig|\d+)")


class _InitFrame:
    """A constructor frame as Lightning reads it (``f_code`` and ``f_locals``), named ``__init__``."""

    def __init__(self, frame: types.FrameType) -> None:
        self.f_code = frame.f_code.replace(co_name="__init__")
        self.f_locals = frame.f_locals


def _caller(frame: types.FrameType) -> types.FrameType | None:
    """The frame that called ``frame``, with mutmut's trampoline frames skipped."""
    caller = frame.f_back
    while caller is not None and str(Path(caller.f_code.co_filename).resolve()) == _TRAMPOLINE_FILE:
        caller = caller.f_back
    return caller


def collect_init_args(
    frame: types.FrameType, path_args: list[dict[str, Any]], inside: bool = False, classes: tuple[type, ...] = ()
) -> list[dict[str, Any]]:
    """Lightning's ``collect_init_args`` (same rule: every ``__init__`` frame of the class chain, most specific
    last), walking past the trampolines."""
    _, _, _, local_vars = inspect.getargvalues(frame)
    caller = _caller(frame)
    if caller is None:
        return path_args
    mutated_init = _MUTATED_INIT.fullmatch(frame.f_code.co_name) is not None
    local_self, local_args = parsing._get_init_args(_InitFrame(frame) if mutated_init else frame)
    if "__class__" in local_vars and (not classes or isinstance(local_self, classes)):
        path_args.append(local_args)
        return collect_init_args(caller, path_args, inside=True, classes=classes)
    if not inside:
        return collect_init_args(caller, path_args, inside=False, classes=classes)
    return path_args


parsing.collect_init_args = collect_init_args


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """Fastest tests first, by ``mutmut-stats.json`` (in mutmut's working folder; absent in its first run)."""
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


_session_start = time.monotonic()


def pytest_sessionstart() -> None:
    global _session_start
    _session_start = time.monotonic()


def pytest_sessionfinish(exitstatus: int) -> None:
    """One line per mutant run: its name, its pytest exit status (0: survived) and its seconds."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" in mutant:
        record = {"mutant": mutant, "exit": int(exitstatus), "seconds": round(time.monotonic() - _session_start, 3)}
        with open("mutant-times.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
