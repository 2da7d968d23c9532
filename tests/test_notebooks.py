"""Every ``notebooks/*.ipynb`` runs top to bottom without a cell error and shows a plot.

Each runs in a fresh kernel of this interpreter (a ``python3`` kernelspec written for the test
and put first on ``JUPYTER_PATH``, so a user's own kernelspec cannot pick another Python),
with the notebook's folder as working directory, as Jupyter runs it. The notebooks need the
MovieLens-100K data from ``make data``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder whose ``kernels/python3`` runs ``sys.executable``."""
    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(root / "kernels" / "python3")
    return root


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, "no notebooks/*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path: Path, kernel_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    notebook = nbformat.read(path, as_version=4)
    assert notebook.cells[0].cell_type == "markdown", "the first cell should say what it shows"
    NotebookClient(notebook, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert images, f"{path.name} showed no plot"
