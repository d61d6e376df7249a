"""The package's layers, as docs/architecture.md draws them: every import points down (or stays inside its folder).

Read from the source with ``ast`` (imports inside functions included), so a new upward import fails here with the
file, the line and the two layers, before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sdd_lightning

PACKAGE = Path(sdd_lightning.__file__).resolve().parent

# lowest first; a part may import the parts of lower layers and itself, nothing of its own layer or above
LAYERS: list[set[str]] = [
    {"errors"},
    {"catalog"},
    {"method", "models", "data"},
    {"reporting"},
    {"training"},
    {"builders"},
    {"cli"},
]
LAYER_OF = {part: index for index, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str | None:
    """``sdd_lightning.training.module`` -> ``training``; ``None`` for the package top or another package."""
    names = module.split(".")
    return names[1] if names[0] == "sdd_lightning" and len(names) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _sources()}
    assert parts == set(LAYER_OF), "a new module or folder at the package root needs its place in LAYERS"


def test_the_package_root_holds_at_most_eight_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [
        f"line {line}: {own} (layer {LAYER_OF[own]}) imports {module} (layer {LAYER_OF[part]})"
        for line, module in _imports(path)
        if (part := _part(module)) is not None and part != own and LAYER_OF[part] >= LAYER_OF[own]
    ]
    assert not upward, "\n".join(upward)


def test_the_package_top_imports_nothing_of_its_own_at_import_time():
    """``import sdd_lightning`` stays free of torch: the public names are loaded on first use."""
    top = _imports(PACKAGE / "__init__.py")
    assert not [module for _, module in top if module.startswith("sdd_lightning")]


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule itself: an import of a higher layer is found (so the test above can fail)."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from sdd_lightning.cli.train import train\n")
    ((line, module),) = _imports(source)
    assert (line, _part(module)) == (2, "cli") and LAYER_OF["cli"] > LAYER_OF["method"]
