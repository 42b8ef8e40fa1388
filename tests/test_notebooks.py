"""The notebooks: every one runs top to bottom with the small settings
PYRO_VAE_NOTEBOOK_SMALL=1 selects, under the inline backend, and every cell
that plots shows its figure; the committed copies were executed (figures
included) and print no absolute path of the machine that ran them; and they
use the package through its API, ``import pyro_vae as pv``, only."""

import ast
import re

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

import pyro_vae
from conftest import REPO, SHARED_DATA, make_mnist_dir

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell

# a plotting call: plt.<anything> that draws (plt.show, plt.imshow, plt.plot, ...), az.plot_*,
# the notebooks' show_images, or a .plot(...) method (a DataFrame's, an Axes')
PLOT_MODULES = {"plt": None, "az": "plot_"}
NOT_DRAWING = {"figure", "subplots", "close", "rcParams", "style", "get_cmap", "cm"}
PLOT_FUNCTIONS = {"show_images"}

API = set(pyro_vae.__all__) | {"__version__"}
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


def internal_uses(sources):
    """What the cells ``sources`` (one notebook's, in order) take from inside the package rather
    than from its API: an import of a submodule (``from pyro_vae.program import ...``), a name
    imported from ``pyro_vae`` that is not in ``pyro_vae.__all__``, or such an attribute of the
    package under any name it was imported as (``pv.program``). A notebook that needs something
    the API lacks is the place to find out: the answer is an export, not a reach inside."""
    tree = ast.parse("\n".join(TransformerManager().transform_cell(source) for source in sources))
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                if name.name == "pyro_vae":
                    aliases.add(name.asname or "pyro_vae")
                elif name.name.startswith("pyro_vae."):
                    found.append(name.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_vae."):
            found.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "pyro_vae":
            found += [f"pyro_vae.{name.name}" for name in node.names if name.name not in API]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in API:
                found.append(f"{node.value.id}.{node.attr}")
    return found


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


def test_api_rule():
    assert internal_uses(["import pyro_vae as pv", "run = pv.fit(pv.FitConfig())\npv.evaluate(run)"]) == []
    assert internal_uses(["from pyro_vae.program.density import observation"]) == ["pyro_vae.program.density"]
    assert internal_uses(["import pyro_vae.runs.config"]) == ["pyro_vae.runs.config"]
    assert internal_uses(["import pyro_vae as pv", "pv.program.estimators.evaluate(m, q, x)"]) == ["pv.program"]
    assert internal_uses(["from pyro_vae import fit, observation"]) == ["pyro_vae.observation"]
    assert internal_uses(["%matplotlib inline\nimport pyro_vae\npyro_vae.models.BernoulliMLP"]) == ["pyro_vae.models"]
    # a command line naming a module is a string, not a reach inside
    assert internal_uses(["cmd = [sys.executable, '-m', 'pyro_vae.fit', '--import', 'my_models']"]) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_the_api_only(path):
    notebook = nbformat.read(path, as_version=4)
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert internal_uses(sources) == [], "import these from pyro_vae (exported in pyro_vae/__init__.py) instead"


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
