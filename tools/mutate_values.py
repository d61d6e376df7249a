"""Mutation of the values that mutating Python code misses: recipe YAML values and constructor defaults.

mutmut (``make mutation``) plants bugs in Python expressions. A published setting's numbers mostly live elsewhere:
in the YAML files it composes (``conf/recipe``, ``pair``, ``distill``, ``loss``, ``data``, ...) and in the
numeric and boolean defaults of the constructors those files name (``Cifar100DataModule(padding=4)``). This tool
plants one change at a time in those values and runs a fixed set of value-pinning tests against it:

- **YAML mutants**: every number and boolean of every file under :data:`CONF_GROUPS` that at least one setting of
  ``conf/published.yaml`` composes (Hydra's defaults list decides; files no setting uses are left out). A number
  ``x`` becomes ``2 * x`` (``0`` becomes ``1``), a boolean its negation; list items are mutated one by one.
- **Default mutants**: every number and boolean default (also inside a tuple default) of ``__init__`` of each
  ``sdd_lightning`` class that those files name as ``_target_``, of the package's base classes of those, and of
  :data:`EXTRA_CONSTRUCTORS` (objects a targeted constructor builds from its own arguments).

Each mutant runs only the tests of the selection that read its file (YAML: Hydra loaded it during the test) or
called its constructor, as a first traced run of the whole selection records, fastest first, stopping at the first
failure (``-x``). The mutation is made in a temporary copy of ``src/``, ``tests/``, ``docs/`` and
``pyproject.toml``; the working tree is never written. Every mutant's pytest runs in a process forked from one that
has imported torch, Lightning and Hydra but nothing of the project, so a mutant pays for the project's import and
its tests only.

Statuses: ``killed`` (a test failed, or collection broke), ``survived`` (every selected test passed), ``timeout``
(not counted as killed), ``no tests`` (no test of the selection reads the value). Prints a Markdown table per file
and the survivors, and writes a JSON report (``--report``)::

    python tools/mutate_values.py                         # every mutant
    python tools/mutate_values.py --kind default          # only the constructor defaults
    python tools/mutate_values.py --only 'conf/recipe/cifar100.yaml' --only pair/cifar100/res32x4_shv1 --limit 5
    python tools/mutate_values.py --list                  # the mutants, without running them

The selection (:data:`TESTS`, :data:`DESELECT`) is the suite's value-pinning tests: the literal recipe values with
their official sources and the recipe-built data module (``test_recipes.py``), every config composing and building
(``test_configs.py``), the training step replayed against the official one (``training/test_oracle.py``) and the
augmentation against the official views (``data/test_augmentation.py``). Two tests are left out because they
compare the configs with docs/recipes.md, which is generated from the configs: a value changed on purpose comes
with the table regenerated (their failure message says how), so they cannot tell a wrong value from an intended
one, and they would take most of each mutant's time. ``--tests`` and ``-k`` run another selection, e.g. to see
whether any other test of the suite kills a survivor.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = Path("src/sdd_lightning/conf")
CONF_GROUPS = (
    "recipe",
    "pair",
    "distill",
    "loss",
    "data_method",
    "pair_method",
    "optimizer",
    "scheduler",
    "data",
    "experiment",
)
"""The config groups whose values are recipe values (not trainer, logger or callback switches)."""
EXTRA_CONSTRUCTORS = ("sdd_lightning.method.losses.scale_decoupled.ScaleDecoupledLoss",)
"""Constructors no config names but a targeted one calls with its own arguments (DistillationModule builds it)."""
TESTS = (
    "tests/test_recipes.py",
    "tests/test_configs.py",
    "tests/training/test_oracle.py",
    "tests/data/test_augmentation.py",
    # the library's own defaults, pinned to the official values (a module built in Python reads them)
    "tests/method/test_losses.py::test_the_library_defaults_are_the_official_cifar_values",
)
DESELECT = "not (docs_recipes_md_is_generated or builds_the_values_of_the_recipe_table)"
COPIED = ("src", "tests", "docs", "pyproject.toml")
DEFAULT_REPORT = Path("mutants/values/report.json")
COLLECTION = "<collection>"
"""Where a unit reached outside any test (at import or collection) is recorded: then every test may read it."""
STATUSES = ("killed", "survived", "timeout", "no tests", "error", "not run")


# ---------------------------------------------------------------------------------------------------------------
# Which values, and what each becomes (pure functions)


def changed(value: bool | int | float) -> bool | int | float:
    """The one mutation of a value: a boolean negated, a number doubled (0 becomes 1)."""
    if isinstance(value, bool):
        return not value
    if value == 0:
        return type(value)(1)
    return value * 2


def yaml_literal(value: bool | int | float) -> str:
    """``value`` as YAML that OmegaConf reads back as the same type (a float always with a dot)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


@dataclass(frozen=True)
class Mutant:
    """One planted change: the characters ``start:end`` of ``file`` (``original``) replaced by ``mutated``."""

    kind: str  # "yaml" or "default"
    file: str  # relative to the repository root
    line: int
    where: str  # the YAML key path, or Class.__init__(argument)
    start: int
    end: int
    original: str
    mutated: str
    unit: str  # what a test must reach for the mutant to matter: the YAML file, or module.Class.__init__

    @property
    def name(self) -> str:
        return f"{self.file}:{self.where}:{self.original}->{self.mutated}"

    def apply(self, text: str) -> str:
        if text[self.start : self.end] != self.original:
            raise ValueError(f"{self.name}: expected {self.original!r} at {self.start}, found another text")
        return text[: self.start] + self.mutated + text[self.end :]


def _yaml_loader() -> type:
    """The loader OmegaConf reads config files with (its float rule differs from PyYAML's)."""
    from omegaconf._utils import get_yaml_loader

    return get_yaml_loader()


_SCALARS = {"tag:yaml.org,2002:int": int, "tag:yaml.org,2002:float": float, "tag:yaml.org,2002:bool": bool}


def yaml_mutants(text: str, file: str) -> list[Mutant]:
    """Every number and boolean of a config file, each changed once. Hydra's ``defaults`` list is left alone."""
    loader = _yaml_loader()
    root = yaml.compose(text, Loader=loader)
    found: list[Mutant] = []

    def visit(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if path == "" and key.value == "defaults":
                    continue
                visit(value, f"{path}.{key.value}" if path else str(key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, f"{path}[{i}]")
        elif isinstance(node, yaml.ScalarNode) and node.style is None and node.tag in _SCALARS:
            value = yaml.load(node.value, Loader=loader)
            if not math.isfinite(value):
                return
            original = text[node.start_mark.index : node.end_mark.index]
            found.append(
                Mutant(
                    "yaml",
                    file,
                    node.start_mark.line + 1,
                    path,
                    node.start_mark.index,
                    node.end_mark.index,
                    original,
                    yaml_literal(changed(value)),
                    file,
                )
            )

    if root is not None:
        visit(root, "")
    return found


def _literal(node: ast.expr) -> bool | int | float | None:
    """The value of a number or boolean literal (``-1`` included), else ``None``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal(node.operand)
        return None if inner is None or isinstance(inner, bool) else -inner
    if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float):
        return node.value
    return None


def _offset(lines: list[str], lineno: int, col: int) -> int:
    """The character offset of an ast position (``col`` counts UTF-8 bytes)."""
    before = sum(len(line) for line in lines[: lineno - 1])
    return before + len(lines[lineno - 1].encode()[:col].decode())


def default_mutants(source: str, file: str, module: str, classes: list[str]) -> list[Mutant]:
    """Every number and boolean default of ``__init__`` of the named classes of a module, each changed once."""
    lines = source.splitlines(keepends=True)
    found: list[Mutant] = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name in classes):
            continue
        init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        if init is None:
            continue
        args = init.args
        positional = args.posonlyargs + args.args
        pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
        for arg, default in pairs:
            items = default.elts if isinstance(default, ast.Tuple | ast.List) else [default]
            for i, item in enumerate(items):
                value = _literal(item)
                if value is None:
                    continue
                start = _offset(lines, item.lineno, item.col_offset)
                end = _offset(lines, item.end_lineno, item.end_col_offset)
                where = f"{node.name}.__init__({arg.arg}" + (f"[{i}])" if item is not default else ")")
                found.append(
                    Mutant(
                        "default",
                        file,
                        item.lineno,
                        where,
                        start,
                        end,
                        source[start:end],
                        repr(changed(value)),
                        f"{module}.{node.name}.__init__",
                    )
                )
    return found


def yaml_targets(text: str) -> list[str]:
    """The ``sdd_lightning`` classes a config file names as ``_target_``, anywhere in it."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and target.startswith("sdd_lightning."):
                found.append(target)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(yaml.load(text, Loader=_yaml_loader()))
    return found


def in_scope(conf_file: str) -> bool:
    """Whether a file (relative to conf/) is one of :data:`CONF_GROUPS`."""
    return conf_file.split("/", 1)[0] in CONF_GROUPS


def select(mutants: list[Mutant], only: list[str], kind: str, limit: int | None) -> list[Mutant]:
    """The mutants whose name matches one of ``only`` (a glob, or a part of the name), of ``kind``, at most
    ``limit`` of them; in the order of the first pattern each matches, so the first patterns run first."""

    def wanted(m: Mutant) -> bool:
        return not only or any(p in m.name or fnmatch.fnmatch(m.name, p) for p in only)

    def first_match(m: Mutant) -> int:
        return next((i for i, p in enumerate(only) if p in m.name or fnmatch.fnmatch(m.name, p)), 0)

    chosen = sorted((m for m in mutants if kind in ("all", m.kind) and wanted(m)), key=first_match)  # stable
    return chosen[:limit] if limit is not None else chosen


# ---------------------------------------------------------------------------------------------------------------
# Running tests in forked children of one process that has imported the heavy libraries


def _preload() -> None:
    """Import what every test run needs and nothing of the project (which each child imports from the copy)."""
    import hydra  # noqa: F401
    import lightning  # noqa: F401
    import omegaconf  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401


def _child_setup(copy: Path, log: Path) -> None:
    """In a forked child: its own process group, the copy on the path and as working folder, output to ``log``."""
    os.setpgid(0, 0)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(copy)
    paths = [str(copy / "src"), str(copy / "tests")]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["OMP_NUM_THREADS"] = "1"


def _run_forked(copy: Path, log: Path, work, timeout: float | None) -> tuple[str, float]:
    """Run ``work()`` (returns an exit code) in a forked child; ``("exit <code>" or "timeout", seconds)``."""
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            _child_setup(copy, log)
            code = int(work())
        except BaseException as error:  # everything, so that the child never returns into the parent's code
            print(f"mutate_values child: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exit {os.waitstatus_to_exitcode(status)}", time.monotonic() - start
        if timeout is not None and time.monotonic() - start > timeout:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start
        time.sleep(0.05)


class _Trace:
    """A pytest plugin for the first run: which config files each test loads, which watched constructors it
    calls, and how long it takes."""

    def __init__(self, watched: dict[Any, str], conf_dir: Path) -> None:
        self.watched = watched
        self.conf_dir = conf_dir
        self.current = COLLECTION
        self.units: dict[str, set[str]] = {COLLECTION: set()}
        self.seconds: Counter[str] = Counter()
        self.outcomes: dict[str, str] = {}

    def install(self) -> None:
        from hydra.core.plugins import Plugins
        from hydra.plugins.config_source import ConfigSource

        # Hydra executes its plugin modules anew when it first scans them: patch the class it will use
        (source_class,) = [c for c in Plugins.instance().discover(ConfigSource) if c.__name__ == "FileConfigSource"]
        original = source_class.load_config
        trace = self

        def load_config(source, config_path: str):
            full = Path(os.path.realpath(os.path.join(source.path, source._normalize_file_name(config_path))))
            with contextlib.suppress(ValueError):
                trace.units.setdefault(trace.current, set()).add(str(CONF / full.relative_to(trace.conf_dir)))
            return original(source, config_path)

        source_class.load_config = load_config

    def _tracer(self, frame, event, arg):
        if event == "call":
            unit = self.watched.get(frame.f_code)
            if unit is not None:
                self.units.setdefault(self.current, set()).add(unit)

    def pytest_runtest_protocol(self, item):
        import threading

        self.current = item.nodeid
        self.units.setdefault(item.nodeid, set())
        sys.settrace(self._tracer)
        threading.settrace(self._tracer)

    def pytest_runtest_logfinish(self, nodeid):
        import threading

        sys.settrace(None)
        threading.settrace(None)
        self.current = COLLECTION

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] += report.duration
        if report.failed or report.when == "call":
            self.outcomes[report.nodeid] = "failed" if report.failed else report.outcome


class _Subset:
    """A pytest plugin for a mutant's run: only the given tests, in the given order; the first failure noted."""

    def __init__(self, order: list[str], result: Path) -> None:
        self.rank = {nodeid: i for i, nodeid in enumerate(order)}
        self.result = result

    def pytest_collection_modifyitems(self, config, items):
        kept = [item for item in items if item.nodeid in self.rank]
        dropped = [item for item in items if item.nodeid not in self.rank]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = sorted(kept, key=lambda item: self.rank[item.nodeid])

    def pytest_collection_finish(self, session):
        import torch

        torch.set_num_threads(1)

    def pytest_runtest_logreport(self, report):
        if report.failed and not self.result.exists():
            self.result.write_text(report.nodeid)


def _pytest_args(tests: list[str], k: str | None) -> list[str]:
    return ["-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow and not gpu", *tests] + (
        ["-k", k] if k else []
    )


def _conf_digest(conf_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(conf_dir.rglob("*.yaml")):
        digest.update(str(path.relative_to(conf_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _used_conf_files(conf_dir: Path) -> dict[str, list[str]]:
    """Each config file (relative to conf/) that a published setting composes -> those settings (in a child)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sdd_lightning.catalog import setting_names, setting_overrides

    used: dict[str, list[str]] = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for name in setting_names():
            defaults = loader.compute_defaults_list("train", setting_overrides(name, conf_dir), RunMode.RUN)
            for default in defaults.defaults:
                if default.config_path and not default.config_path.startswith("hydra/"):
                    used.setdefault(f"{default.config_path}.yaml", []).append(name)
    GlobalHydra.instance().clear()
    return used


def _constructors(conf_dir: Path, files: list[str]) -> list[dict[str, Any]]:
    """The constructors of the targeted classes, their package base classes and the extra ones (in a child)."""
    import importlib
    import inspect

    names = {t for f in files for t in yaml_targets((conf_dir / f).read_text())} | set(EXTRA_CONSTRUCTORS)
    found: dict[str, dict[str, Any]] = {}
    for dotted in sorted(names):
        module, _, attr = dotted.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        for base in cls.__mro__:
            if not base.__module__.startswith("sdd_lightning") or "__init__" not in vars(base):
                continue
            unit = f"{base.__module__}.{base.__qualname__}.__init__"
            source = Path(inspect.getsourcefile(base)).resolve()
            found[unit] = {"unit": unit, "module": base.__module__, "class": base.__qualname__, "source": str(source)}
    return list(found.values())


def _tree_digest(copy: Path, tests: list[str], k: str | None) -> str:
    """What a first run depends on: every file of the copy (sources, tests, docs) and the selection."""
    digest = hashlib.sha256(json.dumps([tests, k]).encode())
    for path in sorted(p for p in copy.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(copy)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def baseline(copy: Path, tests: list[str], k: str | None, cache: Path) -> dict[str, Any]:
    """The used config files, the constructors and a traced run of the selection, from a forked child; kept in
    ``cache``'s folder and reused while no file of the copy and no part of the selection changed."""
    tree = _tree_digest(copy, tests, k)
    kept = cache.parent / "first-run.json"
    if kept.is_file():
        result = json.loads(kept.read_text())
        if result.get("digest") == tree:
            return result
    out = copy / "baseline.json"
    conf_dir = copy / CONF

    def work() -> int:
        import pytest

        digest = _conf_digest(conf_dir)
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        used = cached.get("used") if cached.get("digest") == digest else None
        if used is None:
            used = _used_conf_files(conf_dir)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"digest": digest, "used": used}, indent=1))
        files = sorted(f for f in used if in_scope(f))
        constructors = _constructors(conf_dir, files)
        import importlib

        watched = {}
        for c in constructors:
            cls = importlib.import_module(c["module"])
            for part in c["class"].split("."):
                cls = getattr(cls, part)
            watched[vars(cls)["__init__"].__code__] = c["unit"]
        trace = _Trace(watched, conf_dir)
        trace.install()
        start = time.monotonic()
        code = pytest.main([*_pytest_args(tests, k)[2:]], plugins=[trace])  # no -q -x: every test, all reported
        for c in constructors:
            c["file"] = str(Path(c["source"]).relative_to(copy))
        out.write_text(
            json.dumps(
                {
                    "exit": int(code),
                    "seconds": time.monotonic() - start,
                    "used": used,
                    "files": files,
                    "constructors": constructors,
                    "tests": {
                        n: {"seconds": s, "units": sorted(trace.units.get(n, ()))} for n, s in trace.seconds.items()
                    },
                    "collection_units": sorted(trace.units[COLLECTION]),
                    "outcomes": trace.outcomes,
                }
            )
        )
        return int(code)

    status, seconds = _run_forked(copy, copy / "baseline.log", work, timeout=None)
    if not out.is_file():
        raise SystemExit(f"the first run failed ({status}); its output: {copy / 'baseline.log'}")
    result = json.loads(out.read_text())
    failed = sorted(n for n, o in result["outcomes"].items() if o == "failed")
    if result["exit"] != 0 or failed:
        tail = (copy / "baseline.log").read_text()[-3000:]
        raise SystemExit(f"the tests fail without any mutant (exit {result['exit']}): {failed}\n{tail}")
    if not any(u.startswith(str(CONF)) for t in result["tests"].values() for u in t["units"]):
        raise SystemExit("the first run recorded no config file loaded by any test: the tracing is broken")
    result["wall_seconds"] = seconds
    result["digest"] = tree
    kept.write_text(json.dumps(result))
    return result


def mutants_of(copy: Path, base: dict[str, Any]) -> list[Mutant]:
    """Every mutant of the used config files and the constructors the first run found."""
    found = []
    for f in base["files"]:
        file = str(CONF / f)
        found += yaml_mutants((copy / file).read_text(), file)
    by_file: dict[tuple[str, str], list[str]] = {}
    for c in base["constructors"]:
        by_file.setdefault((c["file"], c["module"]), []).append(c["class"])
    for (file, module), classes in sorted(by_file.items()):
        found += default_mutants((copy / file).read_text(), file, module, classes)
    return found


def tests_for(mutant: Mutant, base: dict[str, Any]) -> list[str]:
    """The tests that reach the mutant's file or constructor, fastest first (all of them when collection did)."""
    tests = base["tests"]
    if mutant.unit in base["collection_units"]:
        chosen = list(tests)
    else:
        chosen = [n for n, t in tests.items() if mutant.unit in t["units"]]
    return sorted(chosen, key=lambda n: tests[n]["seconds"])


@dataclass
class Result:
    mutant: Mutant
    status: str
    seconds: float = 0.0
    tests: int = 0
    killed_by: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_mutant(copy: Path, mutant: Mutant, base: dict[str, Any], k: str | None, timeout: float | None) -> Result:
    """Plant the mutant in the copy, run its tests in a forked child, and put the file back."""
    order = tests_for(mutant, base)
    if not order:
        return Result(mutant, "no tests")
    expected = sum(base["tests"][n]["seconds"] for n in order)
    limit = timeout if timeout is not None else 60 + 3 * expected
    path = copy / mutant.file
    text = path.read_text()
    stat = path.stat()
    result_file = copy / "killed_by.txt"
    result_file.unlink(missing_ok=True)
    files = sorted({n.split("::", 1)[0] for n in order})

    def work() -> int:
        import pytest

        sys.dont_write_bytecode = True  # the mutated module must never leave a .pyc behind
        return pytest.main(_pytest_args(files, k), plugins=[_Subset(order, result_file)])

    try:
        path.write_text(mutant.apply(text))
        # a later second than the original: a .pyc of the original never stands for the mutant
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        status, seconds = _run_forked(copy, copy / "mutant.log", work, limit)
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    killed_by = result_file.read_text() if result_file.is_file() else None
    if status == "timeout":
        return Result(mutant, "timeout", seconds, len(order), detail=f"over {limit:.0f} s")
    code = int(status.split()[1])
    if code == 0:
        return Result(mutant, "survived", seconds, len(order))
    if code in (1, 2):  # a failed test, or a collection the mutant broke
        return Result(mutant, "killed", seconds, len(order), killed_by or "collection")
    tail = (copy / "mutant.log").read_text()[-800:]
    return Result(mutant, "error", seconds, len(order), detail=f"pytest exit {code}: {tail}")


# ---------------------------------------------------------------------------------------------------------------
# Report


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def table(results: list[Result]) -> str:
    """A Markdown table per file: mutants, each status, and the score killed / mutants."""
    lines = [
        "| file | mutants | killed | survived | timed out | no test reads it | not run | score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_file: dict[str, Counter[str]] = {}
    for r in results:
        by_file.setdefault(r.mutant.file, Counter())[r.status] += 1
    totals: Counter[str] = Counter()
    for file, counts in sorted(by_file.items()):
        totals.update(counts)
        lines.append(_row(file, counts))
    lines.append(_row("**all**", totals))
    return "\n".join(lines)


def _row(label: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    columns = [n, counts["killed"], counts["survived"], counts["timeout"], counts["no tests"], counts["not run"]]
    return f"| {label} | " + " | ".join(map(str, columns)) + f" | {_percent(counts['killed'], n)} |"


def report(results: list[Result], base: dict[str, Any], args: argparse.Namespace, wall: float) -> dict[str, Any]:
    counts = Counter(r.status for r in results)
    ran = [r.seconds for r in results if r.status not in ("no tests", "not run")]
    return {
        "tests": list(args.tests),
        "deselect": args.k,
        "baseline": {
            "tests": len(base["tests"]),
            "seconds": round(base["seconds"], 1),
            "conf_files": base["files"],
            "constructors": [c["unit"] for c in base["constructors"]],
        },
        "totals": dict(counts),
        "score": counts["killed"] / len(results) if results else None,
        "score_of_those_run": counts["killed"] / (len(results) - counts["not run"]) if results else None,
        "seconds": {
            "wall": round(wall, 1),
            "mutants": round(sum(ran), 1),
            "median_per_mutant": round(sorted(ran)[len(ran) // 2], 2) if ran else None,
        },
        "mutants": [
            {
                **asdict(r.mutant),
                "name": r.mutant.name,
                "status": r.status,
                "seconds": round(r.seconds, 2),
                "tests": r.tests,
                "killed_by": r.killed_by,
                "detail": r.detail,
            }
            for r in results
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="mutants whose name matches (glob or part)")
    parser.add_argument("--kind", choices=("all", "yaml", "default"), default="all")
    parser.add_argument("--limit", type=int, help="at most this many mutants (after --only and --kind)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 60 + 3x its tests' first run)")
    parser.add_argument("--tests", nargs="+", default=list(TESTS), help="the test files (default: the selection)")
    parser.add_argument("-k", default=DESELECT, help="pytest -k expression over them ('' for none)")
    parser.add_argument("--budget", type=float, help="start no mutant after this many seconds (the rest: not run)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="the JSON report")
    parser.add_argument("--list", action="store_true", help="only list the mutants (still needs the first run)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)
    wall = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still removes its copy
    copy = Path(tempfile.mkdtemp(prefix="sdd-values-"))
    try:
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, copy / name)
        _preload()
        cache = (ROOT / args.report).parent / "used-conf-files.json"
        print(f"first run of {len(args.tests)} test files (traced) in {copy} ...", flush=True)
        base = baseline(copy, args.tests, args.k or None, cache)
        print(f"  {len(base['tests'])} tests, {base['seconds']:.0f} s", flush=True)
        mutants = select(mutants_of(copy, base), args.only, args.kind, args.limit)
        if args.list:
            for m in mutants:
                print(f"{m.name}  ({len(tests_for(m, base))} tests)")
            return 0
        results = []
        for i, mutant in enumerate(mutants, 1):
            if args.budget is not None and time.monotonic() - wall > args.budget:
                results.append(Result(mutant, "not run"))
                continue
            result = run_mutant(copy, mutant, base, args.k or None, args.timeout)
            results.append(result)
            print(f"[{i}/{len(mutants)}] {result.status:>8} {result.seconds:6.1f} s  {mutant.name}", flush=True)
            if result.status == "error":
                print(result.detail, flush=True)
        print()
        print(table(results))
        missed = [r for r in results if r.status not in ("killed", "not run")]
        if missed:
            print("\nNot killed:")
            for r in missed:
                print(f"{r.status:>9}  {r.mutant.name}  (line {r.mutant.line})")
        data = report(results, base, args, time.monotonic() - wall)
        path = ROOT / args.report
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"\n{data['seconds']}; report: {path.relative_to(ROOT)}")
        return 0
    finally:
        if args.keep:
            print(f"copy kept: {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
