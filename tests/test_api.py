"""The Python API, ``import pyro_vae as pv``: its names, the commands that share three of them, and
``pv.compare`` returning what ``python -m pyro_vae.compare`` prints and writes."""

import json
import subprocess
import sys

import pytest

import pyro_vae as pv
from pyro_vae.compare import main as compare_main

QUIET = {"progress": False, "log": lambda *a: None}


def test_importing_a_command_leaves_the_api_function_in_place():
    """``import pyro_vae.fit`` binds the command's module as attribute ``fit`` of the package; the
    package keeps its function. In a fresh interpreter, the commands imported after and before the API."""
    script = """
import sys
import pyro_vae.fit, pyro_vae.evaluate, pyro_vae.compare
import pyro_vae as pv
from pyro_vae.runs import fit
from pyro_vae.studies.comparison import compare
from pyro_vae.studies.evaluation import evaluate
assert (pv.fit, pv.evaluate, pv.compare) == (fit, evaluate, compare), (pv.fit, pv.evaluate, pv.compare)
assert sys.modules["pyro_vae.fit"].main.__module__ == "pyro_vae.fit"
pv.extra = 1  # other attributes are set as usual
assert pv.extra == 1
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_every_api_name_is_there():
    assert sorted(pv.__all__) == sorted(set(pv.__all__))
    missing = [name for name in pv.__all__ if not hasattr(pv, name)]
    assert missing == []
    assert callable(pv.fit) and pv.fit.__module__ == "pyro_vae.runs"
    assert pv.FitConfig().mcmc == pv.MCMCSettings() and pv.FitConfig().evaluation == pv.EvaluationSettings()


def test_bad_settings_are_usage_errors(tmp_path):
    with pytest.raises(pv.UsageError, match="split must be one of test, train"):
        pv.evaluate(tmp_path, pv.EvaluateSettings(split="validation"))
    with pytest.raises(pv.UsageError, match="unknown family 'nonesuch'"):
        pv.compare(settings=pv.CompareSettings(families="nonesuch"), out=tmp_path / "c", **QUIET)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    pv.fit(pv.FitConfig(dataset="linear_gaussian", latent_dim=2, hidden_dims=(16,), epochs=3, num_train=200,
                        num_test=50, evaluation=pv.EvaluationSettings(iwae_samples=10), out=str(out)), **QUIET)
    return out


def without_timings(value):
    """``value`` with every wall-clock figure (a key naming seconds) left out: they differ between two runs."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_compare_returns_what_the_command_prints_and_writes(small_run, tmp_path, capsys):
    flags = ["--subset", "4", "--chains", "2", "--warmup", "20", "--samples", "20", "--iwae-samples", "20",
             "--elbo-samples", "20", "--refine-steps", "2", "--seed", "1"]
    compare_main(["--run", str(small_run), *flags, "--out", str(tmp_path / "command"), "--no-progress"])
    printed = capsys.readouterr().out
    command_json = json.loads((tmp_path / "command" / "report.json").read_text())
    settings = pv.CompareSettings(subset=4, chains=2, warmup=20, samples=20, iwae_samples=20, elbo_samples=20,
                                  refine_steps=2, seed=1)
    comparison = pv.compare(small_run, settings, out=tmp_path / "api", **QUIET)
    assert comparison.out == tmp_path / "api"
    assert json.loads((comparison.out / "report.json").read_text()) == json.loads(json.dumps(comparison.numbers))
    assert comparison.report == (comparison.out / "report.md").read_text()
    # the same seed: the same draws, so every figure but the wall-clock ones agrees with the command's
    assert without_timings(json.loads(json.dumps(comparison.numbers))) == without_timings(command_json)
    assert comparison["amortized"]["elbo"] == command_json["amortized"]["elbo"]
    report = (tmp_path / "command" / "report.md").read_text()
    assert report in printed
    assert set(comparison.idata) == set(comparison.posteriors) == {"amortized", "semi_amortized", "meanfield", "nuts"}
    assert comparison.idata["nuts"].posterior["z"].shape[:2] == (2, 20)
    loaded = pv.compare(pv.load_run(small_run), settings, out=tmp_path / "loaded", **QUIET)
    assert without_timings(json.loads(json.dumps(loaded.numbers))) == without_timings(command_json)
