"""The notebooks: every one runs top to bottom with the small settings
PYRO_VAE_NOTEBOOK_SMALL=1 selects, under the inline backend, and every cell
that plots shows its figure; the committed copies were executed (figures
included) and print no absolute path of the machine that ran them."""

import ast
import re

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

from conftest import REPO, SHARED_DATA, make_mnist_dir

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell

# a plotting call: plt.<anything> that draws (plt.show, plt.imshow, plt.plot, ...), az.plot_*,
# the notebooks' show_images, or a .plot(...) method (a DataFrame's, an Axes')
PLOT_MODULES = {"plt": None, "az": "plot_"}
NOT_DRAWING = {"figure", "subplots", "close", "rcParams", "style", "get_cmap", "cm"}
PLOT_FUNCTIONS = {"show_images"}

ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|root|home|usr|opt|var|private|Users|mnt)/")
TEXT_MIMETYPES = re.compile(r"^(text/.*|application/(json|javascript|.*\+json))$")


def plotting_calls(source):
    """Names of the plotting functions a cell calls at its top level (calls
    inside a def or class body only define a plot, they draw nothing when
    the cell runs)."""
    python = TransformerManager().transform_cell(source)  # %matplotlib and friends -> get_ipython()
    calls = []

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in PLOT_FUNCTIONS:
                calls.append(func.id)
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if owner in PLOT_MODULES:
                    prefix = PLOT_MODULES[owner]
                    if (prefix is None and func.attr not in NOT_DRAWING) or (prefix and func.attr.startswith(prefix)):
                        calls.append(f"{owner}.{func.attr}")
                elif func.attr == "plot":
                    calls.append(".plot")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(python))
    return calls


def plotting_cells(notebook):
    return [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and plotting_calls(cell.source)]


def has_image(cell):
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def output_texts(cell):
    """Every piece of text a code cell's outputs show (images left out)."""
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            yield output.get("text", "")
        elif kind == "error":
            yield "\n".join([output.get("ename", ""), output.get("evalue", ""), *output.get("traceback", [])])
        for mimetype, value in output.get("data", {}).items():
            if TEXT_MIMETYPES.match(mimetype):
                yield value if isinstance(value, str) else str(value)


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_extending_models.ipynb",
                                           "03_comparing_inference.ipynb", "04_discrete_latents.ipynb"]


def test_plotting_rule():
    assert plotting_calls("%matplotlib inline\nplt.plot([1], [2]); plt.show()") == ["plt.plot", "plt.show"]
    assert plotting_calls("az.plot_trace(idata)\naz.summary(idata)") == ["az.plot_trace"]
    assert plotting_calls("with torch.no_grad():\n    show_images(x, (8, 8))") == ["show_images"]
    assert plotting_calls("df.plot(kind='bar')") == [".plot"]
    assert plotting_calls("def show_images(rows):\n    plt.imshow(rows)\n    plt.show()") == []
    assert plotting_calls("import matplotlib.pyplot as plt\nx = torch.randn(3)") == []


@pytest.fixture
def mnist_dir(tmp_path):
    """The shared offline MNIST beside the checkout, or, without it, random
    images under MNIST's file names (enough rows for the small settings), so
    that the notebooks' MNIST cells run and plot either way."""
    shared = SHARED_DATA / "mnist"
    if (shared / "train-images-idx3-ubyte.gz").exists():
        return shared
    make_mnist_dir(tmp_path / "mnist", n_train=2000, n_test=300)
    return tmp_path / "mnist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_plots(path, monkeypatch, mnist_dir):
    monkeypatch.setenv("PYRO_VAE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYRO_VAE_MNIST_DIR", str(mnist_dir))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks select the inline backend themselves
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [(i, o.get("ename"), o.get("evalue")) for i, cell in enumerate(notebook.cells)
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    unplotted = [(i, plotting_calls(notebook.cells[i].source)) for i in plotting_cells(notebook)
                 if not has_image(notebook.cells[i])]
    assert not unplotted, f"cells (index, plotting calls) that showed no image/png: {unplotted}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_executed_and_portable(path):
    """The committed outputs are those of a complete run (every code cell
    executed, no errors, every plotting cell with its figure) and show no
    path of the machine that ran it."""
    notebook = nbformat.read(path, as_version=4)
    code = [(i, cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    assert [i for i, cell in code if cell.get("execution_count") is None] == [], "code cells never executed"
    counts = [cell.execution_count for _, cell in code]
    assert counts == sorted(counts), f"cells executed out of order: {counts}"
    errors = [i for i, cell in code for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"cells with an error in their committed output: {errors}"
    missing = [i for i in plotting_cells(notebook) if not has_image(notebook.cells[i])]
    assert not missing, f"plotting cells committed without an image/png output: {missing}"
    leaks = [(i, line.strip()) for i, cell in code for text in output_texts(cell) for line in text.splitlines()
             if ABSOLUTE_PATH.search(line) or "site-packages" in line]
    assert not leaks, f"absolute paths in committed outputs (cell index, line): {leaks}"
