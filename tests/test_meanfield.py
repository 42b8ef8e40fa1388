"""The meanfield guide (classical VB) and test-time inference, against the exact linear-Gaussian posterior."""

import json

import pyro
import pyro.poutine as poutine
import pytest
import torch

from conftest import fit_linear_gaussian
from pyro_vae.density import log_joint_terms
from pyro_vae.evaluate import main as evaluate_main
from pyro_vae.config import EvaluationSettings
from pyro_vae.fit import FitConfig, fit
from pyro_vae.local_fit import fit_local_posterior
from pyro_vae.registry import get_guide, get_model
from pyro_vae.train import make_svi


@pytest.fixture(scope="module")
def linear_gaussian_fit(tmp_path_factory):
    return fit_linear_gaussian(tmp_path_factory.mktemp("lgmf") / "run", epochs=150, iwae_samples=50)


def mc_elbo(model, q, x, particles=400):
    """ELBO per point, averaged over many draws: E_q[log p(x, z) - log q(z)]."""
    with torch.no_grad():
        z = q.sample((particles,))
        log_lik, log_prior = log_joint_terms(model, x, z)
        return (log_lik + log_prior - q.log_prob(z)).mean(0)


def test_meanfield_optimum_is_exact_mean_and_inverse_diagonal_precision(linear_gaussian_fit):
    model, x = linear_gaussian_fit.model, linear_gaussian_fit.data.test_x[:100]
    pyro.set_rng_seed(0)
    q, steps = fit_local_posterior(model, x, num_particles=16, lr=0.02, max_steps=4000)
    assert 100 <= steps < 4000
    with torch.no_grad():
        exact = model.exact_posterior(x)
        precision = torch.linalg.inv(exact.covariance_matrix)
    posterior_sd = exact.stddev.mean()
    error = (q.mean - exact.mean).abs()
    assert error.mean() < 0.05 * posterior_sd and error.max() < 0.2 * posterior_sd
    # mean-field variances are 1 / diag(precision): smaller than the marginal
    # variances whenever the posterior is correlated
    meanfield_var = 1 / torch.diagonal(precision, dim1=-2, dim2=-1)
    relative = q.variance / meanfield_var - 1
    assert relative.mean().abs() < 0.05 and relative.abs().max() < 0.25
    assert torch.all(meanfield_var <= exact.variance + 1e-6)


def test_meanfield_elbo_between_amortized_and_exact(linear_gaussian_fit):
    model, guide, x = linear_gaussian_fit.model, linear_gaussian_fit.guide, linear_gaussian_fit.data.test_x[:100]
    pyro.set_rng_seed(1)
    q_star, _ = fit_local_posterior(model, x, num_particles=16, lr=0.02)
    with torch.no_grad():
        exact = model.log_marginal(x).mean()
        q_encoder = guide.posterior(x)
    elbo_star = mc_elbo(model, q_star, x).mean()
    elbo_encoder = mc_elbo(model, q_encoder, x).mean()
    assert elbo_encoder <= elbo_star + 0.01
    assert elbo_star <= exact + 0.01
    # the approximation gap of a diagonal q for a correlated Gaussian posterior is real
    assert exact - elbo_star > 0.0


def test_meanfield_guide_uses_the_given_subsample_indices():
    model = get_model("bernoulli_mlp")(data_dim=6, latent_dim=2, hidden_dims=(8,))
    guide = get_guide("meanfield")(model, num_data=50)
    x = torch.rand(4, 6).round()
    idx = torch.tensor([3, 17, 42, 8])
    trace = poutine.trace(guide).get_trace(x, idx, 50)
    assert torch.equal(trace.nodes["data"]["value"], idx)
    assert torch.allclose(trace.nodes["z"]["fn"].base_dist.loc, guide.loc.weight[idx])
    # and the model, run with the guide's sample, sees the same rows
    model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(x, idx, 50)
    assert torch.equal(model_trace.nodes["data"]["value"], idx)


def test_meanfield_step_touches_only_the_minibatch_rows():
    pyro.set_rng_seed(0)
    model = get_model("bernoulli_mlp")(data_dim=6, latent_dim=2, hidden_dims=(8,))
    guide = get_guide("meanfield")(model, num_data=50)
    svi = make_svi(model, guide, lr=1e-2, local_lr=0.1)
    before = guide.loc.weight.detach().clone()
    idx = torch.tensor([3, 17, 42, 8])
    svi.step(torch.rand(4, 6).round(), idx, 50)
    changed = (guide.loc.weight.detach() != before).any(-1).nonzero().flatten().sort().values
    assert changed.tolist() == sorted(idx.tolist())
    # decoder weights are point estimates, updated by the dense optimizer
    assert "sparse" in svi.optim.optimizers and "dense" in svi.optim.optimizers


def test_meanfield_guide_refuses_new_data_in_forward():
    model = get_model("bernoulli_mlp")(data_dim=6, latent_dim=2)
    guide = get_guide("meanfield")(model, num_data=50)
    with pytest.raises(ValueError, match="posterior"):
        guide(torch.rand(4, 6).round())


def test_fit_and_evaluate_meanfield_run(tmp_path, capsys):
    out = tmp_path / "run"
    result = fit(FitConfig(guide="meanfield", epochs=3, hidden_dims=(32,), out=str(out), evaluation=EvaluationSettings(20, 50)), progress=False, log=lambda *a: None)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["test_elbo"] is not None and metrics[0]["test_elbo"] is None
    assert result.guide.last_fit_steps >= 100
    evaluate_main([str(out), "--iwae-samples", "10", "--max-examples", "20", "--no-progress"])
    results = json.loads((out / "eval.json").read_text())
    assert results["num_examples"] == 20 and results["log_likelihood"] < 0
    assert results["test_time_fit_steps"] >= 100  # the stopping rule needs two windows of 50
