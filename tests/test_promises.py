"""Promises of the README and docs/ that no other test kept: resuming every kind of SVI run,
compiled SVI against eager SVI, AIS at latent dimension 10, NUTS on a posterior that is not
Gaussian, and data-parallel training of a stochastic guide."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import arviz as az
import pytest
import torch

from quadrature import posterior_on_grid
from test_reliability import StopAfter
from pyro_vae.plumbing.checkpoint import load_checkpoint
from pyro_vae.runs.config import EvaluationSettings, FitConfig
from pyro_vae import fit, resume
from pyro_vae.infer import ais
from pyro_vae.infer.ais import AISOptions
from pyro_vae.infer.mcmc.sampling import sample_latents
from pyro_vae.plumbing.registry import get_model
from pyro_vae.infer.svi.train import Interrupted

QUIET = {"progress": False, "log": lambda *a: None}
TESTS = Path(__file__).resolve().parent


def tiny(out, **settings):
    """3 epochs of 4 steps (200 digits, batch 64), hidden (16,), a cheap summary."""
    return FitConfig(**{"num_train": 200, "epochs": 3, "hidden_dims": (16,), "batch_size": 64, "out": str(out),
                        "evaluation": EvaluationSettings(10, 20), **settings})


def assert_same_run(dir_a, dir_b, exact=True):
    """Same epoch, parameters (and buffers) and metrics but for seconds; ``exact``: bitwise, else
    to float rounding."""
    a, b = load_checkpoint(dir_a / "checkpoint.pt"), load_checkpoint(dir_b / "checkpoint.pt")
    assert a["epoch"] == b["epoch"]
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                same = torch.equal(value, b[part][key]) if exact else torch.allclose(value, b[part][key], atol=1e-5,
                                                                                    rtol=1e-4)
                assert same, (part, key, (value - b[part][key]).abs().max())
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    if exact:
        assert strip(a["metrics"]) == strip(b["metrics"])
    else:
        for m, n in zip(strip(a["metrics"]), strip(b["metrics"]), strict=True):
            assert m.keys() == n.keys() and all(m[k] == pytest.approx(n[k], rel=1e-5) for k in m), (m, n)
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (dir_a, dir_b))
    assert summary_a["log_likelihood"] == pytest.approx(summary_b["log_likelihood"], rel=0 if exact else 1e-5)


# ------------------------------------------------------------------ resuming (docs/fit.md, "Runs that survive
# interruption": on CPU a stopped and resumed run ends with exactly the parameters and metrics of one that ran
# straight through)


@pytest.mark.parametrize("settings", [
    {"guide": "semi_amortized", "local_steps": 3},
    {"bayesian_decoder": True},
    {"lr_schedule": "burda", "lr": 1e-2},  # the rate drops from epoch 2 on: the resumed epoch must use it
    {"compile": "on"},
    {"elbo": "score-function", "baseline": "learned"},  # the baseline's network and running average go on
    {"model": "categorical_mlp", "guide": "categorical_mlp", "latent_dim": 2, "elbo": "relaxed",
     "anneal_rate": 0.05},  # the temperature goes on falling: about 0.82 at the resume's first step (t = 4), not 1
], ids=["semi_amortized", "bayesian_decoder", "lr_schedule_burda", "compile_on", "learned_baseline",
        "relaxed_temperature"])
def test_stopped_and_resumed_equals_straight_through(tmp_path, settings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tiny(tmp_path / "straight", **settings), **QUIET)
        with pytest.raises(Interrupted) as info:
            fit(tiny(tmp_path / "stopped", **settings), should_stop=StopAfter(5), **QUIET)  # in epoch 2, step 2
        assert info.value.epoch == 2
        assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["epoch"] == 1
        resume(tmp_path / "stopped", **QUIET)
    assert not [str(w.message) for w in caught if "SVI runs" in str(w.message)]  # --compile on compiled
    # a compiled run's resumed epoch starts with a plain SVI step where the straight run ran the compiled
    # graph (Inductor's kernels round differently): equal to float rounding there, bitwise elsewhere
    assert_same_run(tmp_path / "straight", tmp_path / "stopped", exact=settings.get("compile") != "on")


# ------------------------------------------------------------------ compiled SVI (docs/fit.md, "Compiled SVI":
# the compiled run follows the eager one)


def test_compiled_fit_matches_the_eager_fit(tmp_path):
    """Two epochs of --compile on against --compile off: the same metrics, parameters and summary to
    float rounding, and the compiled run really ran its graph (no fallback warning)."""
    fit(tiny(tmp_path / "eager", epochs=2, compile="off"), **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = fit(tiny(tmp_path / "compiled", epochs=2, compile="on"), **QUIET)
    assert not [str(w.message) for w in caught if "SVI runs" in str(w.message)]
    assert_same_run(tmp_path / "eager", tmp_path / "compiled", exact=False)
    assert compiled.metrics[-1]["train_elbo"] > compiled.metrics[0]["train_elbo"] + 0.5  # it trained


# ------------------------------------------------------------------ AIS at latent dimension 10 (docs/evaluation.md)


@pytest.fixture
def one_thread():
    """AIS's many small tensor operations: on the 2-core machine, under load, torch's second intra-op
    thread cost 8x the CPU time (this test's model, 200 steps: 24 s against 2.7 s with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ais_at_latent_dimension_ten_matches_the_exact_marginal(one_thread):
    """pPCA, 20-D data, 10-D latent, posterior sd 0.37 against the prior's 1. Measured (20 points, 16
    chains x 1000 steps from the prior, 2 seeds): mean error 0.036 and 0.056 nats per point (the
    standard error of that mean 0.02-0.03), per point a spread of 0.08-0.13 and at most 0.30;
    500 steps were biased low by 0.06-0.07, 8 chains x 2000 steps agreed within 0.03."""
    torch.manual_seed(0)
    model = get_model("linear_gaussian")(data_dim=20, latent_dim=10)
    with torch.no_grad():
        model.weight.copy_(0.5 * torch.randn(20, 10))
        model.bias.copy_(0.5 * torch.randn(20))
        model.raw_noise.fill_(0.0)  # sigma = 0.69
    model.requires_grad_(False)
    x, _ = ais.simulate(model, 20, seed=1)
    exact = model.log_marginal(x)
    result = ais.ais_log_likelihood(model, x, AISOptions(steps=1000, chains=16))
    error = result.log_likelihood - exact
    assert abs(float(error.mean())) < 0.1
    assert float(error.abs().max()) < 0.5
    assert float(result.ess.mean()) > 0.6 * 16  # measured 12.6-13.3 of 16


# ------------------------------------------------------------------ NUTS on a posterior that is not Gaussian


def test_nuts_matches_quadrature_on_a_skewed_posterior():
    """A sharp Bernoulli decoder on 8 pixels and a 2-D latent: posteriors with skewness -1.3 and 2.0
    and correlations -0.7 and -0.8. NUTS's means and covariances against a grid's, within 5 Monte
    Carlo standard errors (effective sample sizes of the draws, variances of the products from the
    grid); measured |z| < 1.5."""
    torch.manual_seed(0)
    model = get_model("bernoulli_mlp")(data_dim=8, latent_dim=2, hidden_dims=(16,))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    model.requires_grad_(False).eval()
    x, _ = ais.simulate(model, 12, seed=1)
    x = x[[6, 11]]
    exact = posterior_on_grid(model, x, points=201)
    sd = exact.covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    skewness = exact.third / sd**3
    assert skewness.abs().max(-1).values.min() > 1.0  # each point's posterior is far from Gaussian
    # 200 + 400 left R-hat between 1.009 and 1.057 over seeds 0-5 on this sharp posterior; 500 + 1000, 1.005-1.013
    draws, stats, _ = sample_latents(model, x, chains=4, warmup=500, samples=1000, seed=0, compile=False)
    assert draws.shape == (4, 1000, 2, 2) and not stats["diverging"].any()
    draws = draws.double()
    ess = torch.as_tensor(az.ess(az.from_dict(posterior={"z": draws.numpy()}))["z"].values)
    assert float(az.rhat(az.from_dict(posterior={"z": draws.numpy()}))["z"].max()) < 1.02
    mean_z = (draws.mean((0, 1)) - exact.mean) / (sd / ess.sqrt())
    assert mean_z.abs().max() < 5, mean_z
    centred = draws - exact.mean
    products = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (chains, draws, N, 2, 2)
    ess_products = torch.as_tensor(az.ess(az.from_dict(posterior={"c": products.numpy()}), method="mean")["c"].values)
    product_sd = (exact.fourth - exact.covariance**2).sqrt()
    covariance_z = (products.mean((0, 1)) - exact.covariance) / (product_sd / ess_products.sqrt())
    assert covariance_z.abs().max() < 5, covariance_z


# ------------------------------------------------------------------ data-parallel SVI of a stochastic guide
# (pyro_vae/infer/svi/distributed.py: ranks shard each global minibatch, draw their own noise, and the weighted
# all-reduce makes the update that of one process on the whole global batch)


def launch(out, seed, runs, processes):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*launcher, str(TESTS / "svi_gradients.py"), str(out), str(seed), *runs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finished(proc):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def test_two_ranks_of_a_stochastic_guide_match_one_process(tmp_path):
    """The amortized guide on one global batch of 64, the parameters held still. With each row's
    noise fixed (the same eps_i whichever rank holds row i) two ranks' all-reduced gradient is
    the single process's to float rounding, and so is the full-data training ELBO. With the guide's
    own noise (each rank its seed) the two runs' 200 gradients agree in mean and in spread: the
    two-rank gradient is an unbiased estimate of the same expected gradient, no noisier."""
    steps = 200
    runs = ["amortized_common_noise:1", f"amortized:{steps}"]
    one, two = launch(tmp_path / "one", 100, runs, 1), launch(tmp_path / "two", 0, runs, 2)
    finished(one)
    finished(two)
    load = lambda run, guide: torch.load(run / guide / "gradients.pt")  # noqa: E731
    a, b = load(tmp_path / "one", "amortized_common_noise"), load(tmp_path / "two", "amortized_common_noise")
    assert a["gradients"].shape == b["gradients"].shape == (1, a["gradients"].shape[1])
    scale = float(a["gradients"].abs().max())
    assert torch.allclose(a["gradients"], b["gradients"], rtol=0, atol=1e-5 * scale)  # measured 2e-7 * scale
    assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-6)
    a, b = (load(run, "amortized")["gradients"].double() for run in (tmp_path / "one", tmp_path / "two"))
    assert a.shape == b.shape == (steps, a.shape[1])
    va, vb = a.var(0), b.var(0)
    live = (va > 0) & (vb > 0)  # the encoder's weights of pixels that are 0 in all 64 images never move
    assert torch.equal(va > 0, vb > 0) and torch.equal(a.mean(0)[~live], b.mean(0)[~live])
    z = (b.mean(0) - a.mean(0))[live] / ((va + vb)[live] / steps).sqrt()
    # about 2000 coordinates driven by 128 noise dimensions: strongly correlated, so the mean of z^2
    # swings (measured 0.57-1.6 over runs) and the largest |z| stays under 4.1
    assert z.abs().max() < 5.5 and 0.3 < float((z**2).mean()) < 3.0, (z.abs().max(), (z**2).mean())
    ratio = float((vb / va)[live].median())  # measured 0.95-1.02
    assert 0.8 < ratio < 1.25, ratio
