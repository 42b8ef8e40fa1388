"""The structure the code promises: imports point one way, small modules and
functions, one density for every method, models found without registration edits."""

import ast
import importlib.util
import json
import re
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch

from conftest import REPO
from pyro_vae.runs.assembly import build
from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.runs.config import EvaluationSettings, FitConfig, MCMCSettings
from pyro_vae.data import RawDataset, load_dataset, load_digits, register_dataset
from pyro_vae.program.density import log_joint_terms
from pyro_vae import fit
from pyro_vae.models import LatentVariableModel
from pyro_vae.plumbing.registry import register_model

PACKAGES = {"pyro_vae": REPO / "pyro_vae", "pyro_vae.models": REPO / "models", "pyro_vae.guides": REPO / "guides"}
QUIET = {"progress": False, "log": lambda *a: None}


def modules(packages=PACKAGES):
    """name -> path of every module of the packages and all their sub-packages (the tree walked)."""
    found = {}
    for package, folder in packages.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name, path, known=None):
    """The project modules ``name`` imports, at any depth of its code (function-level imports count)."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    known = modules() if known is None else known
    return {t for t in targets if t in known and t != name}


def import_cycle(packages=PACKAGES):
    """The first import cycle among the modules of ``packages`` (a list of names), or None."""
    found = modules(packages)
    graph = {name: imports_of(name, path, found) for name, path in found.items()}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return None
        if state.get(node) == "open":
            return path + [node]
        state[node] = "open"
        for target in sorted(graph[node]):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        state[node] = "done"
        return None

    return next((cycle for cycle in (visit(node, []) for node in sorted(graph)) if cycle), None)


# The layers, lowest first: a module imports from its own layer or those below it, never above. The
# package's own __init__ is the Python API (``import pyro_vae as pv``), above everything but the commands.
LAYERS = [
    ("pyro_vae.plumbing", "pyro_vae.nn"),
    ("pyro_vae.data",),
    ("pyro_vae.program",),
    ("pyro_vae.objectives",),
    ("pyro_vae.infer",),
    ("pyro_vae.models", "pyro_vae.guides"),
    ("pyro_vae.runs",),
    ("pyro_vae.studies",),
    ("pyro_vae",),
    ("pyro_vae.fit", "pyro_vae.evaluate", "pyro_vae.compare"),
]


def layer_of(name, layers=LAYERS):
    """The index in ``layers`` of the longest prefix that names ``name``'s package."""
    best = max(((len(prefix), i) for i, group in enumerate(layers) for prefix in group
                if name == prefix or name.startswith(prefix + ".")), default=None)
    return None if best is None else best[1]


def imports_pointing_up(packages=PACKAGES, layers=LAYERS):
    """(importer, imported) for every import from a lower layer to a higher one."""
    found = modules(packages)
    return sorted((name, target) for name, path in found.items() for target in imports_of(name, path, found)
                  if layer_of(target, layers) > layer_of(name, layers))


def test_every_module_has_a_layer():
    assert [name for name in modules() if layer_of(name) is None] == []


def test_imports_point_down_the_layers():
    assert imports_pointing_up() == []


def test_the_layer_check_sees_an_import_pointing_up(tmp_path):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high import g\n")
    (package / "high.py").write_text("from pkg.low import a\n")
    layers = [("pkg.low",), ("pkg.high",), ("pkg",)]
    assert imports_pointing_up({"pkg": package}, layers) == [("pkg.low.a", "pkg.high")]
    (package / "low" / "a.py").write_text("import torch\n")
    assert imports_pointing_up({"pkg": package}, layers) == []


def test_the_top_of_the_package_is_small():
    """At most 12 entries at the top of pyro_vae/: the commands, the API and a folder per job."""
    entries = [p.name for p in (REPO / "pyro_vae").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(entries)


def test_project_import_graph_is_acyclic():
    cycle = import_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    # the commands sit on top: nothing below imports them
    commands = {"pyro_vae.fit", "pyro_vae.evaluate", "pyro_vae.compare"}
    for name, path in modules().items():
        targets = imports_of(name, path)
        assert not (targets & commands), f"{name} imports a command: {targets & commands}"


def test_the_walk_reaches_sub_packages():
    names = modules()
    assert {"pyro_vae.infer", "pyro_vae.infer.mcmc", "pyro_vae.infer.mcmc.nuts", "pyro_vae.infer.ais"} <= set(names)


def test_the_cycle_check_sees_a_cycle(tmp_path):
    """A cycle through a sub-package, made of function-level and relative imports, is found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (package / "sub" / "c.py").write_text("import pkg.a\n")
    assert import_cycle({"pkg": package}) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (package / "sub" / "c.py").write_text("import torch\n")  # the cycle broken
    assert import_cycle({"pkg": package}) is None


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_imports_alone(name):
    done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_modules_and_functions_are_small():
    """No module over 350 lines, no function over about 60."""
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        assert len(lines) <= 350, f"{name}: {len(lines)} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 65, f"{name}.{node.name}: {length} lines"


def test_a_model_file_registers_itself_without_editing_the_package(tmp_path):
    """Every module in models/ is imported by the package: a new model is one file."""
    source = (REPO / "models" / "__init__.py").read_text()
    assert "pkgutil.iter_modules" in source
    (tmp_path / "models").mkdir()
    for path in (REPO / "models").glob("*.py"):
        (tmp_path / "models" / path.name).write_text(path.read_text())
    (tmp_path / "models" / "poisson_mlp.py").write_text(textwrap.dedent('''
        import pyro.distributions as dist
        from torch.nn import functional as F
        from pyro_vae.nn import mlp
        from pyro_vae.plumbing.registry import register_model
        from .base import LatentVariableModel

        @register_model("poisson_mlp_test")
        class PoissonMLP(LatentVariableModel):
            def __init__(self, data_dim, latent_dim=2, hidden_dims=(400,)):
                super().__init__(data_dim, latent_dim, hidden_dims)
                self.decoder = mlp([latent_dim, *reversed(hidden_dims), data_dim])
            def likelihood(self, z):
                return dist.Poisson(F.softplus(self.decode(z))).to_event(1)
    '''))
    code = ("import sys, pyro_vae; import importlib.util as u; "
            f"spec = u.spec_from_file_location('pyro_vae.models', '{tmp_path}/models/__init__.py', "
            f"submodule_search_locations=['{tmp_path}/models']); m = u.module_from_spec(spec); "
            "sys.modules['pyro_vae.models'] = m; spec.loader.exec_module(m); "
            "from pyro_vae.plumbing.registry import MODELS; print(sorted(MODELS))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "poisson_mlp_test" in done.stdout and "bernoulli_mlp" in done.stdout


# ---------------------------------------------------------------- one density, through the program


@register_dataset("digits_labelled_test")
def load_digits_labelled(data_dir=None, download=False):
    """Binary digits with a one-hot label appended: rows of 64 + 10."""
    d = load_digits()
    g = torch.Generator().manual_seed(0)
    join = lambda x, y: torch.cat([torch.bernoulli(x, generator=g), torch.nn.functional.one_hot(y, 10).float()], -1)  # noqa: E731
    return RawDataset(join(d.train_x, d.train_y), d.train_y, join(d.test_x, d.test_y), d.test_y, None, "none",
                      "cvae_test")


@register_model("cvae_test")
class ConditionalVAE(LatentVariableModel):
    """p(x | z, y): the label travels in the row and is an input, not observed (notebook 02)."""

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(32,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = mlp([latent_dim + 10, *reversed(hidden_dims), data_dim - 10])

    def likelihood(self, z, y):
        return dist.Bernoulli(logits=self.decode(torch.cat([z, y.expand(*z.shape[:-1], 10)], -1))).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        pixels, y = x[..., :-10], x[..., -10:]
        with data_plate(x, idx, num_data):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z, y), obs=pixels)


@register_model("forgets_decode_test")
class ForgetsDecode(LatentVariableModel):
    """Calls its network as self.decoder(z), which a Bayesian decoder cannot reach."""

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(16,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), data_dim])

    def likelihood(self, z):
        return dist.Bernoulli(logits=self.decoder(z)).to_event(1)


def test_conditional_vae_runs_under_nuts_through_the_python_api(tmp_path):
    trained = fit(FitConfig(dataset="digits_labelled_test", latent_dim=2, hidden_dims=(32,), epochs=3,
                            out=str(tmp_path / "cvae"), evaluation=EvaluationSettings(10, 20)), **QUIET)
    nuts = fit(FitConfig(inference="nuts", out=str(tmp_path / "nuts"),
                         mcmc=MCMCSettings(decoder_from=str(trained.out), subset=5, chains=2, warmup=50, samples=50)),
               **QUIET)
    draws = nuts.guide.loc  # the moment-matched posterior means of the 5 points
    assert draws.shape == (5, 2) and torch.isfinite(draws).all()
    # the NUTS target was the program's: the label changes log p(x | z)
    x, z = trained.data.test_x[:5], torch.zeros(5, 2)
    relabelled = torch.cat([x[:, :-10], x[:, -10:].roll(1, -1)], -1)
    with torch.no_grad():
        assert not torch.allclose(log_joint_terms(trained.model, x, z)[0], log_joint_terms(trained.model, relabelled, z)[0])
    assert json.loads((tmp_path / "nuts" / "config.json").read_text())["inference"] == "nuts"


def test_a_model_that_forgets_decode_is_refused_with_a_bayesian_decoder():
    data = load_dataset("digits")
    with pytest.raises(UsageError, match="must call self.decode"):
        build(FitConfig(model="forgets_decode_test", hidden_dims=(16,), bayesian_decoder=True), data)
    build(FitConfig(model="bernoulli_mlp", hidden_dims=(16,), bayesian_decoder=True), data)  # decode: accepted
    build(FitConfig(model="forgets_decode_test", hidden_dims=(16,)), data)  # point weights: fine either way


def test_every_package_folder_is_installed():
    """setup.py finds every folder with an __init__.py below pyro_vae/, models/ and guides/: a new
    sub-package lands in the wheel without an edit."""
    spec = importlib.util.spec_from_file_location("project_setup", REPO / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)  # defines packages_and_folders; setup() runs only as __main__
    packages, folders = setup_module.packages_and_folders()
    walked = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert set(packages) == walked
    assert folders == {package: str(folder.relative_to(REPO)) for package, folder in PACKAGES.items()}


# ---------------------------------------------------------------- the README's layout table


def readme_layout_links():
    """The link targets of the README's "Layout" table (every ``](path)`` in its rows)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {target.rstrip("/") for row in rows for target in re.findall(r"\]\(([^)#]+)\)", row)}


def test_the_readme_layout_table_names_every_module():
    """Each module of pyro_vae/ has its own link in the table, and each package its folder: a module
    added without its row fails here."""
    links = readme_layout_links()
    wanted = set()
    for path in (REPO / "pyro_vae").rglob("*.py"):
        relative = path.relative_to(REPO)
        wanted.add(str(relative.parent) if path.name == "__init__.py" else str(relative))
    wanted |= {"models", "guides"}
    assert sorted(wanted - links) == [], "modules missing from README.md's layout table"
    assert sorted(t for t in links if not (REPO / t).exists()) == [], "layout rows naming no file"
