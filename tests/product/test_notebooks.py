"""The notebooks in ``notebooks/`` run top to bottom on the built-in synthetic data, and are committed clean.

Each notebook is executed with nbclient in a Jupyter kernel that runs *this* interpreter: a ``python3``
kernelspec is installed into a temporary prefix that ``JUPYTER_PATH`` puts first, so that a ``python3`` kernel
of another environment (a user-level kernelspec, say) cannot be picked up. The kernel's working directory is an
empty temporary folder, which must still be empty afterwards: notebooks write only to their own temporary folders.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
ipykernel_kernelspec = pytest.importorskip("ipykernel.kernelspec")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = ("01_api_walkthrough.ipynb", "02_method_picture.ipynb", "03_results.ipynb")


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A Jupyter data folder holding a ``python3`` kernelspec whose argv is ``sys.executable``."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    ipykernel_kernelspec.install(prefix=str(prefix), kernel_name="python3")
    return prefix / "share" / "jupyter"


def execute(name: str, jupyter_path: Path, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    """Runs the notebook ``name`` top to bottom and returns it with its outputs; any cell error fails the test."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files: not in $HOME
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # IPython profile and history: not in $HOME
    monkeypatch.setenv("MPLBACKEND", "Agg")  # headless; the notebooks' `%matplotlib inline` still renders PNGs
    monkeypatch.setenv("WANDB_MODE", "offline")
    # The networks are tiny: extra threads gain little, and on shared CI cores (also used by the sdd-train
    # processes notebook 03 starts, which inherit this) they oversubscribe the CPU and slow everything down.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    assert sorted(p.name for p in workdir.iterdir()) == [], f"{name} wrote into its working directory"
    return notebook


def text_of(notebook: nbformat.NotebookNode) -> str:
    """All text the notebook's cells printed or displayed (streams and text/plain results)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def count_images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_every_notebook_is_tested_and_committed_without_outputs():
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS), "add new notebooks to NOTEBOOKS (and a test) in tests/product/test_notebooks.py"
    for name in found:
        notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", name
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            where = f"{name}, cell {index}: clear the outputs before committing"
            assert cell.outputs == [], where
            assert cell.execution_count is None, where


def test_01_api_walkthrough(jupyter_path, tmp_path, monkeypatch):
    text = text_of(execute("01_api_walkthrough.ipynb", jupyter_path, tmp_path, monkeypatch))
    assert f"python    {sys.executable}" in text  # the kernel is this interpreter
    # the head: (B, R, K) local logits for a batch of 8, 21 regions, 16 classes
    assert "teacher local logits: (8, 21, 16)" in text
    assert "student local logits: (8, 21, 16)" in text
    checks = [line for line in text.splitlines() if "==" in line or "unchanged" in line]
    assert len(checks) >= 5 and all(line.rstrip().endswith("True") for line in checks), checks
    assert "train/complementary_fraction" in text
    assert "without overriding the hooks:" in text and "forward_features" in text
    assert "region 0 == plain_student(x): True" in text


def test_02_method_picture(jupyter_path, tmp_path, monkeypatch):
    notebook = execute("02_method_picture.ipynb", jupyter_path, tmp_path, monkeypatch)
    text = text_of(notebook)
    assert "teacher local logits: (500, 21, 16)" in text
    assert count_images(notebook) == 3  # local predictions, consistent/complementary regions, per-scale summary


def test_03_results(jupyter_path, tmp_path, monkeypatch):
    notebook = execute("03_results.ipynb", jupyter_path, tmp_path, monkeypatch)
    text = text_of(notebook)
    assert "| setting |" in text and "quickstart/sd_kd" in text  # the sdd-summary table
    assert "3 runs; written to" in text
    assert count_images(notebook) == 2  # accuracy curves, KD vs SD-KD bars
    assert "removed" in text  # the notebook deleted its temporary run folder
