"""AIS and BDMC (pyro_vae.infer.ais) against closed-form and brute-force log p(x)."""

import math

import pyro.distributions as dist
import pytest
import torch

from quadrature import posterior_on_grid
from pyro_vae.infer import ais
from pyro_vae.infer.ais import AISOptions
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.plumbing.registry import get_model


@pytest.fixture(autouse=True)
def one_thread():
    """AIS's many small tensor operations: on the 2-core machine, under load, torch's second intra-op
    thread cost 8x the CPU time (200 steps of 340 rows in 10-D: 24 s against 2.7 s with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_gaussian(seed=0):
    """pPCA with random weights: a posterior much tighter than the prior (sd about 0.2)."""
    torch.manual_seed(seed)
    model = get_model("linear_gaussian")(data_dim=10, latent_dim=2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 2))
        model.bias.copy_(0.5 * torch.randn(10))
        model.raw_noise.fill_(0.0)  # sigma = softplus(0) = 0.69
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def pca():
    model = linear_gaussian()
    x, _ = ais.simulate(model, 40, seed=1)
    return model, x, model.log_marginal(x)


def test_schedules_run_from_zero_to_one():
    for kind in ("sigmoid", "linear", "geometric"):
        betas = ais.annealing_schedule(50, kind)
        assert len(betas) == 51 and betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    sigmoid = ais.annealing_schedule(50)
    assert torch.allclose(sigmoid + sigmoid.flip(0), torch.ones(51, dtype=torch.float64))  # symmetric
    assert ais.annealing_schedule(1).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        ais.annealing_schedule(10, "cosine")


def test_exact_posterior_start_gives_exact_weights(pca):
    """With p0 = p(z | x), log p(x, z) - log p0(z) = log p(x) everywhere, so
    every chain's log weight is log p(x) whatever the transitions do: checks
    the bookkeeping, the proposal path and the batching (uneven last batch)."""
    model, x, exact = pca
    result = ais.ais_log_likelihood(model, x, AISOptions(steps=5, chains=3, start=model.exact_posterior, batch_size=16))
    assert result.log_weights.shape == (3, len(x))
    assert torch.allclose(result.log_weights.float(), exact.expand(3, -1), atol=1e-3)
    assert torch.allclose(result.log_likelihood.float(), exact, atol=1e-3)
    assert torch.allclose(result.ess, torch.full_like(result.ess, 3.0), atol=1e-4)  # equal weights: ESS = K


def se_of_mean(values):
    return float(values.std()) / math.sqrt(len(values))


def test_ais_from_the_prior_matches_the_exact_marginal(pca):
    """Measured over 12 seeds (40 points, 16 chains x 500 steps): the mean error over points -0.017 to
    0.011 (sd 0.009; its standard error from the points' spread, 0.011), per point a spread of 0.07
    and at most 0.22 nats; ESS at least 13.0 of 16, 14.8 on average. The tolerances are 3-4 standard
    errors."""
    model, x, exact = pca
    result = ais.ais_log_likelihood(model, x, AISOptions(steps=500, chains=16))
    assert result.log_likelihood.shape == (len(x),) and result.log_weights.shape == (16, len(x))
    error = result.log_likelihood - exact
    assert abs(result.mean - float(exact.mean())) < 0.035
    assert float(error.abs().max()) < 0.3
    assert float(error.mean()) < 3 * se_of_mean(error)  # a stochastic lower bound, up to its noise
    assert result.se == pytest.approx(se_of_mean(result.log_likelihood), rel=1e-6)
    assert 0.5 < float(result.acceptance.mean()) < 0.95
    assert result.step_sizes.shape == (499, len(x))
    log_w = result.log_weights
    assert torch.allclose(result.ess, (2 * log_w.logsumexp(0) - (2 * log_w).logsumexp(0)).exp())  # (sum w)^2 / sum w^2
    # annealed weights are nearly equal (measured mean 14.8, least 13.0 of 16) ...
    assert float(result.ess.mean()) > 0.85 * 16 and float(result.ess.min()) > 0.7 * 16
    # ... where importance sampling from the prior (one step: no transition) leaves a few heavy ones (2.1)
    one_step = ais.ais_log_likelihood(model, x, AISOptions(steps=1, chains=16))
    assert float(one_step.ess.mean()) < 0.25 * 16
    assert result.seconds > 0


def test_bdmc_brackets_the_exact_marginal():
    model = linear_gaussian(seed=3)
    result = ais.bdmc(model, 40, AISOptions(steps=500, chains=16), seed=2)
    exact = model.log_marginal(result.x)
    assert result.x.shape == (40, 10) and result.z.shape == (40, 2)
    below, above = result.forward.log_likelihood - exact, result.reverse.log_likelihood - exact
    assert float(below.mean()) <= 3 * se_of_mean(below)  # lower <= exact <= upper, up to Monte Carlo error
    assert float(above.mean()) >= -3 * se_of_mean(above)
    assert abs(result.width) < 0.1
    assert result.width == pytest.approx(result.upper - result.lower)
    assert torch.equal(result.reverse.step_sizes, result.forward.step_sizes.flip(0))


def test_same_seed_same_numbers(pca):
    model, x, _ = pca
    run = lambda seed: ais.ais_log_likelihood(model, x[:10], AISOptions(steps=20, chains=4), seed=seed)  # noqa: E731
    state = torch.get_rng_state()
    first, again, other = run(4), run(4), run(5)
    assert torch.equal(first.log_weights, again.log_weights)
    assert not torch.equal(first.log_weights, other.log_weights)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_bad_start_is_refused(pca):
    model, x, _ = pca
    with pytest.raises(ValueError, match="start"):
        ais.ais_log_likelihood(model, x, AISOptions(steps=2, chains=2, start="posterior"))


class NoSampleNormal(dist.Normal):
    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError


class CannotSimulate(LinearGaussian):
    name = "cannot_simulate"

    def likelihood(self, z):
        return NoSampleNormal(z @ self.weight.T + self.bias, self.noise).to_event(1)


def test_bdmc_needs_a_model_that_simulates():
    with pytest.raises(ValueError, match="cannot simulate"):
        ais.bdmc(CannotSimulate(10, 2), 5, AISOptions(steps=3, chains=2))


def test_ais_agrees_with_quadrature_on_bernoulli_mlp():
    """2-D latent: log p(x) by quadrature on a grid is exact to 1e-5 here. Measured over 4 seeds
    (30 points, 8 chains x 500 steps): the mean error -0.012 to 0.005 (its standard error 0.009),
    per point a spread of 0.04-0.05 and at most 0.12 nats (0.16 against importance sampling with
    K = 20000)."""
    torch.manual_seed(0)
    model = get_model("bernoulli_mlp")(data_dim=20, latent_dim=2, hidden_dims=(16,))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # a sharper decoder: a posterior well inside the prior
    model.requires_grad_(False)
    x, _ = ais.simulate(model, 30, seed=1)
    exact = posterior_on_grid(model, x, points=201).log_marginal
    result = ais.ais_log_likelihood(model, x, AISOptions(steps=500, chains=8))
    error = result.log_likelihood.double() - exact
    assert abs(float(error.mean())) < 0.03
    assert float(error.abs().max()) < 0.2
