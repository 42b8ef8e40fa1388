"""Every registered model with every registered guide, and with every objective, through the commands
(issue #36): each combination ends in a complete run directory, or in one line and exit status 2 with
nothing written. No combination is skipped: the pairs the library refuses are asserted as refusals.

Sizes are the smallest that run (40 training points, one epoch, hidden width 8), so a run directory here
says that the command finishes, not that its numbers are good.
"""

import json
import math

import pytest

from conftest import run_command as run
from pyro_vae.objectives import ELBOS
from pyro_vae.plumbing.registry import get_guide, get_model, guide_names, model_names

MODELS = sorted(n for n in model_names() if get_model(n).__module__.startswith("pyro_vae.models."))
GUIDES = sorted(n for n in guide_names() if get_guide(n).__module__.startswith("pyro_vae.guides."))
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt")
NUTS_FILES = ("config.json", "summary.json", "checkpoint.pt", "posterior.nc", "diagnostics.csv")
DATASET = {"linear_gaussian": "linear_gaussian", "gaussian_mlp": "linear_gaussian", "gmm": "gmm_synthetic"}
# the guide and objective each model is walked with when the other one varies
NATURAL = {"gmm": ("enumerated", "enum"), "categorical_mlp": ("categorical_mlp", "relaxed"),
           "two_layer": ("two_layer", "trace")}


def fit(model, guide, elbo, out, capsys):
    return run("fit", "--model", model, "--guide", guide, "--elbo", elbo, "--dataset", DATASET.get(model, "digits"),
               "--num-train", 40, "--batch-size", 20, "--epochs", 1, "--hidden-dims", 8, "--latent-dim", 2,
               "--no-progress", "--eval-iwae-samples", 5, "--eval-max-examples", 10, "--out", out, capsys=capsys)


def assert_run_or_refusal(status, errors, out, files=RUN_FILES):
    """A complete run directory (``files``), or one line, exit status 2 and no directory."""
    if status == 0:
        missing = [name for name in files if not (out / name).exists()]
        assert not missing, f"incomplete run directory: {missing}"
        summary = json.loads((out / "summary.json").read_text())
        assert all(math.isfinite(v) for k, v in summary.items() if "elbo" in k and isinstance(v, float)), summary
        return True
    assert status == 2, f"exit {status}: {errors[-3:]}"
    assert len(errors) == 1 and errors[0].startswith("fit: error:"), errors
    assert not out.exists(), "a refused run wrote its directory"
    return False


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("guide", GUIDES)
def test_every_model_with_every_guide(model, guide, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    elbo = NATURAL.get(model, (None, "trace"))[1]
    status, errors = fit(model, guide, elbo, tmp_path / "run", capsys)
    if assert_run_or_refusal(status, errors, tmp_path / "run"):
        status, errors = run("evaluate", tmp_path / "run", "--iwae-samples", 5, "--max-examples", 5, "--no-progress",
                             capsys=capsys)
        assert status == 0, errors
        assert math.isfinite(json.loads((tmp_path / "run" / "eval.json").read_text())["log_likelihood"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("elbo", sorted(ELBOS))
def test_every_model_with_every_objective(model, elbo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    guide = NATURAL.get(model, ("amortized", None))[0]
    status, errors = fit(model, guide, elbo, tmp_path / "run", capsys)
    assert_run_or_refusal(status, errors, tmp_path / "run")


@pytest.mark.parametrize("model", MODELS)
def test_every_model_through_nuts_and_compare(model, tmp_path, monkeypatch, capsys):
    """The decoder-level commands on each model's natural pair: NUTS under the fixed decoder, then
    compare on the run (or, for a model whose latents are all discrete, their one-line refusal of NUTS)."""
    monkeypatch.chdir(tmp_path)
    guide, elbo = NATURAL.get(model, ("amortized", "trace"))
    status, errors = fit(model, guide, elbo, tmp_path / "run", capsys)
    assert status == 0, errors
    status, errors = run("fit", "--inference", "nuts", "--decoder-from", tmp_path / "run", "--subset", 2,
                         "--chains", 2, "--warmup", 20, "--samples", 20, "--compile", "off", "--no-progress",
                         "--out", tmp_path / "nuts", capsys=capsys)
    assert_run_or_refusal(status, errors, tmp_path / "nuts", NUTS_FILES)
    status, errors = run("compare", "--run", tmp_path / "run", "--subset", 2, "--chains", 2, "--warmup", 20,
                         "--samples", 20, "--iwae-samples", 5, "--elbo-samples", 5, "--refine-steps", 1,
                         "--out", tmp_path / "cmp", capsys=capsys)
    if status == 0:
        assert (tmp_path / "cmp" / "report.json").exists()
    else:
        assert status == 2 and len(errors) == 1 and errors[0].startswith("compare: error:"), errors
        assert not (tmp_path / "cmp").exists()
