"""Every notebook runs top to bottom, with the small settings PYRO_VAE_NOTEBOOK_SMALL=1 selects."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, SHARED_DATA

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_extending_models.ipynb",
                                           "03_comparing_inference.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYRO_VAE_MNIST_DIR", str(SHARED_DATA / "mnist"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert os.environ["PYRO_VAE_NOTEBOOK_SMALL"] == "1"
