"""Any Pyro program with per-point latent sites (pyro_vae.program.density's contract): several continuous
sites, constrained ones, discrete ones summed out, through every estimator and sampler, checked
against closed forms; the two_layer model through the commands; a user's module through --import."""

import itertools
import json
import math
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.nn import data_plate
from pyro_vae.program.density import latent_layout, layout_of, log_joint, log_joint_terms, unconstrained_terms
from pyro_vae.program.estimators import elbo_terms, log_likelihood
from pyro_vae.infer.ais import AISOptions, ais_log_likelihood
from pyro_vae.infer.mcmc.sampling import inference_data, sample_latents
from pyro_vae.models import LatentVariableModel
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.program.posteriors import FlatPosterior, ProgramPosterior
from pyro_vae.plumbing.registry import register_guide, register_model


@register_model("split_linear_gaussian_test")
class SplitLinearGaussian(LinearGaussian):
    """pPCA with its latent in two sites, z_a (the first coordinate) and z_b (the rest), so every
    closed form of LinearGaussian still holds."""

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            z_a = pyro.sample("z_a", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            z_b = pyro.sample("z_b", dist.Normal(x.new_zeros(len(x), self.latent_dim - 1), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(torch.cat([z_a, z_b], -1)), obs=x)


def pca_model(latent_dim=3, data_dim=5, seed=0):
    torch.manual_seed(seed)
    model = SplitLinearGaussian(data_dim, latent_dim)
    with torch.no_grad():
        model.weight.copy_(torch.randn(data_dim, latent_dim))
        model.bias.copy_(torch.randn(data_dim))
    x = model.marginal().sample((40,))
    return model.eval(), x


def exact_flat_posterior(model, x):
    """p(z_a, z_b | x) as a FlatPosterior: u = [z_a, z_b] is the exact pPCA posterior's z."""
    return FlatPosterior(LinearGaussian.exact_posterior(model, x), layout_of(model, x))


def test_a_program_with_two_sites_has_the_closed_form_density():
    model, x = pca_model()
    layout = latent_layout(model, x[:2])
    assert layout.names == ["z_a", "z_b"] and layout.dim == 3 and not layout.discrete
    z = torch.randn(7, len(x), 3)
    one_site = LinearGaussian(5, 3)  # the one-site program of the same model
    one_site.load_state_dict(model.state_dict())
    split = log_joint(model, x, {"z_a": z[..., :1], "z_b": z[..., 1:]})
    assert torch.allclose(split, log_joint(one_site.eval(), x, z), atol=1e-4)
    # the exact posterior as proposal: every importance weight is p(x)
    q = exact_flat_posterior(model, x)
    assert torch.allclose(log_likelihood(model, lambda _: q, x, 50), model.log_marginal(x), atol=1e-3)
    assert torch.allclose(elbo_terms(model, lambda _: q, x)[2], model.log_marginal(x), atol=1e-3)


def test_ais_on_two_sites_matches_the_closed_form():
    model, x = pca_model()
    result = ais_log_likelihood(model, x[:20], AISOptions(steps=200, chains=8))
    error = (result.log_likelihood - model.log_marginal(x[:20])).mean()
    assert abs(error) < 0.05, error


def moments_agree(draws, mean, variance, sigmas=4.0):
    """Per coordinate, the draws' mean within ``sigmas`` Monte Carlo standard errors of ``mean``, and
    their variance within ``sigmas`` standard errors of ``variance``: each standard error from the
    ESS (ArviZ, bulk) of the quantity averaged, z for the mean and (z - mean)^2 for the variance."""
    import arviz as az

    def ess(values):
        return torch.as_tensor(az.ess(az.convert_to_dataset(values.detach().cpu().numpy()))["x"].values,
                               dtype=values.dtype)

    flat = draws.reshape(-1, *draws.shape[2:])
    se = (variance / ess(draws)).sqrt()
    assert ((flat.mean(0) - mean).abs() <= sigmas * se).all(), ((flat.mean(0) - mean) / se)
    squares = (draws - mean) ** 2
    se_variance = squares.reshape(flat.shape).std(0) / ess(squares).sqrt()
    assert ((flat.var(0) - variance).abs() <= sigmas * se_variance).all(), ((flat.var(0) - variance) / se_variance)


def test_nuts_on_two_sites_has_the_exact_posterior_moments():
    model, x = pca_model()
    x = x[:4]
    draws, stats, _ = sample_latents(model, x, chains=4, warmup=300, samples=500, seed=0, compile=False)
    exact = LinearGaussian.exact_posterior(model, x)
    moments_agree(draws, exact.mean, exact.variance)
    idata = inference_data(draws, stats, x, layout_of(model, x))
    assert set(idata.posterior.data_vars) == {"z_a", "z_b"}
    assert idata.posterior["z_b"].shape == (4, 500, 4, 2)


@register_model("mixture_prior_test")
class MixturePrior(LatentVariableModel):
    """y ~ Categorical(pi), z | y ~ N(mu_y, 1), x | z ~ N(z, s^2), all 1-D: the posterior of z is a
    two-component Gaussian mixture in closed form."""

    pi, mu, s = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 1.5]), 0.5

    def __init__(self, data_dim=1, latent_dim=1, hidden_dims=()):
        super().__init__(data_dim, latent_dim, hidden_dims)

    def forward(self, x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            y = pyro.sample("y", dist.Categorical(self.pi.expand(len(x), 2)))
            z = pyro.sample("z", dist.Normal(self.mu[y].unsqueeze(-1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, self.s).to_event(1), obs=x)

    def exact(self, x):
        """(log p(x), posterior mean and variance of z) per row of x (N, 1)."""
        v = 1 / (1 + 1 / self.s**2)
        log_w = self.pi.log() + dist.Normal(self.mu, math.sqrt(1 + self.s**2)).log_prob(x)  # (N, 2)
        w = torch.softmax(log_w, -1)
        m = v * (self.mu + x / self.s**2)
        mean = (w * m).sum(-1)
        return log_w.logsumexp(-1), mean, (w * (v + m**2)).sum(-1) - mean**2


def test_a_discrete_site_is_summed_out_exactly():
    model = MixturePrior()
    x = torch.tensor([[-2.5], [0.1], [2.0]])
    z = torch.tensor([[-1.0], [0.3], [1.2]])
    log_lik, log_prior = log_joint_terms(model, x, z)
    brute = torch.stack([model.pi[k].log() + dist.Normal(model.mu[k], 1.0).log_prob(z[:, 0])
                         + dist.Normal(z[:, 0], model.s).log_prob(x[:, 0]) for k in range(2)]).logsumexp(0)
    prior = torch.stack([model.pi[k].log() + dist.Normal(model.mu[k], 1.0).log_prob(z[:, 0])
                         for k in range(2)]).logsumexp(0)
    assert torch.allclose(log_lik + log_prior, brute, atol=1e-5)
    assert torch.allclose(log_prior, prior, atol=1e-5)
    assert layout_of(model, x).discrete == ("y",) and layout_of(model, x).dim == 1


def test_nuts_with_the_discrete_site_summed_out_has_the_mixture_moments():
    model = MixturePrior()
    x = torch.tensor([[-1.0], [0.2], [1.0]])
    draws, _, _ = sample_latents(model, x, chains=4, warmup=300, samples=600, seed=1, compile=False)
    _, mean, variance = model.exact(x)
    moments_agree(draws, mean.unsqueeze(-1), variance.unsqueeze(-1))


@register_model("two_discrete_test")
class TwoDiscrete(LatentVariableModel):
    """y1 in {0, 1, 2}, y2 in {0, 1}, x | y ~ N(m[y1, y2], 1) in 2-D: log p(x) is a sum of six terms."""

    def __init__(self, data_dim=2, latent_dim=1, hidden_dims=()):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.p1, self.p2 = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.6, 0.4])
        self.m = torch.arange(12.0).reshape(3, 2, 2) / 3

    def forward(self, x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            y1 = pyro.sample("y1", dist.Categorical(self.p1.expand(len(x), 3)))
            y2 = pyro.sample("y2", dist.Categorical(self.p2.expand(len(x), 2)))
            pyro.sample("x", dist.Normal(self.m[y1, y2], 1.0).to_event(1), obs=x)


def test_the_enumerated_log_likelihood_is_the_brute_force_sum():
    model = TwoDiscrete()
    x = torch.randn(5, 2) * 2
    log_lik, log_prior = log_joint_terms(model, x, None)
    brute = torch.stack([model.p1[a].log() + model.p2[b].log() + dist.Normal(model.m[a, b], 1.0).log_prob(x).sum(-1)
                         for a, b in itertools.product(range(3), range(2))]).logsumexp(0)
    assert torch.allclose(log_lik + log_prior, brute, atol=1e-5)
    assert torch.allclose(log_prior, torch.zeros(5), atol=1e-6)


@register_model("constrained_test")
class ConstrainedScale(LatentVariableModel):
    """s ~ LogNormal(0, 1) per point, x | s ~ N(0, s^2): a constrained site, sampled through exp."""

    def __init__(self, data_dim=1, latent_dim=1, hidden_dims=()):
        super().__init__(data_dim, latent_dim, hidden_dims)

    def forward(self, x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            s = pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(0.0, s).to_event(1), obs=x)


def test_a_constrained_site_is_sampled_in_its_unconstrained_space():
    model = ConstrainedScale()
    x = torch.tensor([[0.5], [2.0]])
    u = torch.randn(3, 2, 1)
    log_lik, log_prior = unconstrained_terms(model, x, u)
    s = u.exp()
    expected = dist.Normal(0.0, 1.0).log_prob(u) + dist.Normal(0.0, s).log_prob(x)  # LogNormal + Jacobian = N(u)
    assert torch.allclose((log_lik + log_prior), expected[..., 0], atol=1e-5)
    # p(s | x) on a grid in u, against NUTS
    grid = torch.linspace(-6, 6, 4001)
    log_post = dist.Normal(0.0, 1.0).log_prob(grid) + dist.Normal(0.0, grid.exp().unsqueeze(-1)).log_prob(x[:, 0]).T
    w = torch.softmax(log_post, -1)
    mean = (w * grid).sum(-1)
    variance = (w * grid**2).sum(-1) - mean**2
    draws, _, _ = sample_latents(model, x, chains=4, warmup=200, samples=500, seed=2, compile=False)
    moments_agree(draws, mean.unsqueeze(-1), variance.unsqueeze(-1))


def test_a_latent_with_no_enumerable_support_is_named():
    class PoissonLatent(LatentVariableModel):
        name = "poisson_latent"

        def forward(self, x, idx=None, num_data=None):
            with data_plate(x, idx, num_data):
                k = pyro.sample("k", dist.Poisson(torch.ones(len(x))))
                pyro.sample("x", dist.Normal(k.unsqueeze(-1), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="site 'k' is discrete \\(Poisson\\) without an enumerable support"):
        latent_layout(PoissonLatent(1, 1), torch.zeros(2, 1))


def test_the_program_posterior_scores_every_site_of_the_guide():
    from pyro_vae.guides.two_layer import TwoLayerGuide
    from pyro_vae.models.two_layer import TwoLayerBernoulli

    model = TwoLayerBernoulli(6, 2, (8,))
    guide = TwoLayerGuide(model, 10, (8,))
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    q = ProgramPosterior(guide, x)
    values = q.sample((3,))
    assert values["z1"].shape == (3, 4, 4) and values["z2"].shape == (3, 4, 2)
    by_hand = (TwoLayerGuide.gaussian(guide.bottom_encoder, x).log_prob(values["z1"])
               + TwoLayerGuide.gaussian(guide.top_encoder, values["z1"]).log_prob(values["z2"]))
    assert torch.allclose(q.log_prob(values), by_hand, atol=1e-5)


USER_MODULE = '''
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.nn import BernoulliLogits, data_plate, mlp
from pyro_vae.models import LatentVariableModel
from pyro_vae.plumbing.registry import register_guide, register_model


@register_model("my_two_layer")
class MyTwoLayer(LatentVariableModel):
    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(16,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.middle = mlp([latent_dim, 8, 2 * 3])
        self.decoder = mlp([3, *hidden_dims, data_dim])

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), data_plate(x, idx, num_data):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(len(x), self.latent_dim), 1.0).to_event(1))
            loc, scale = self.middle(z2).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(scale) + 1e-3).to_event(1))
            pyro.sample("x", BernoulliLogits(logits=self.decode(z1)).to_event(1), obs=x)


@register_guide("my_encoder")
class MyEncoder(nn.Module):
    amortized = True

    def __init__(self, model, num_data, hidden_dims=(16,)):
        super().__init__()
        self.bottom = mlp([model.data_dim, *hidden_dims, 6])
        self.top = mlp([3, 8, 2 * model.latent_dim])

    def forward(self, x, idx=None, num_data=None):
        pyro.module("my_encoder", self)
        with data_plate(x, idx, num_data):
            loc, log_scale = self.bottom(x).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, log_scale.exp()).to_event(1))
            loc, log_scale = self.top(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc, log_scale.exp()).to_event(1))


@register_guide("forgets_z2")
class ForgetsZ2(MyEncoder):
    def forward(self, x, idx=None, num_data=None):
        pyro.module("forgets_z2", self)
        with data_plate(x, idx, num_data):
            loc, log_scale = self.bottom(x).chunk(2, -1)
            pyro.sample("z1", dist.Normal(loc, log_scale.exp()).to_event(1))
'''


def command(folder, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=folder, capture_output=True, text=True, timeout=600)


def test_a_users_two_layer_module_runs_through_every_command(tmp_path):
    """The issue's scenario: a user's own module, named with --import, through fit, evaluate (IWAE
    and AIS), --inference nuts and compare; the run remembers its import."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(USER_MODULE))
    fit = command(tmp_path, "pyro_vae.fit", "--import", "my_models", "--model", "my_two_layer", "--guide",
                  "my_encoder", "--epochs", "2", "--num-train", "200", "--hidden-dims", "16", "--no-progress",
                  "--eval-iwae-samples", "20", "--eval-max-examples", "20", "--out", "run")
    assert fit.returncode == 0, fit.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary["log_likelihood"]) and summary["log_likelihood"] >= summary["test_elbo"] - 1.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["imports"] == ["my_models"]
    evaluate = command(tmp_path, "pyro_vae.evaluate", "run", "--iwae-samples", "50", "--max-examples", "10",
                       "--estimator", "ais", "--ais-steps", "20", "--ais-chains", "2", "--no-progress")
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["ais"]["log_likelihood"] >= results["log_likelihood"] - 1.0
    nuts = command(tmp_path, "pyro_vae.fit", "--inference", "nuts", "--decoder-from", "run", "--subset", "3",
                   "--chains", "2", "--warmup", "30", "--samples", "30", "--no-progress", "--out", "nuts")
    assert nuts.returncode == 0, nuts.stderr[-2000:]
    import arviz as az

    assert set(az.from_netcdf(tmp_path / "nuts" / "posterior.nc").posterior.data_vars) == {"z1", "z2"}
    compare = command(tmp_path, "pyro_vae.compare", "--run", "run", "--subset", "3", "--chains", "2", "--warmup",
                      "30", "--samples", "30", "--iwae-samples", "20", "--elbo-samples", "10", "--refine-steps", "2",
                      "--no-progress", "--out", "cmp")
    assert compare.returncode == 0, compare.stderr[-2000:]
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert math.isfinite(report["amortization_gap"]) and math.isfinite(report["approximation_gap"])


def test_bad_programs_and_modules_are_one_line_errors(tmp_path):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(USER_MODULE))
    missing = command(tmp_path, "pyro_vae.fit", "--import", "my_models", "--model", "my_two_layer", "--guide",
                      "forgets_z2", "--epochs", "1", "--out", "bad")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "samples no value for the model's latent site(s) z2" in missing.stderr
    assert not (tmp_path / "bad").exists()
    unknown = command(tmp_path, "pyro_vae.evaluate", "somewhere", "--import", "nonesuch_module")
    assert unknown.returncode == 2 and "--import nonesuch_module" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_the_two_layer_model_trains_and_its_bounds_order(tmp_path):
    from pyro_vae.runs.config import EvaluationSettings, FitConfig
    from pyro_vae import fit

    run = fit(FitConfig(model="two_layer", guide="two_layer", latent_dim=2, hidden_dims=(32,), epochs=3,
                        num_train=300, out=str(tmp_path / "r"), evaluation=EvaluationSettings(100, 50)),
              progress=False, log=lambda *a: None)
    assert run.summary["log_likelihood"] >= run.summary["test_elbo"] - 0.5
    x = run.data.test_x[:20]
    ais = ais_log_likelihood(run.model, x, AISOptions(steps=100, chains=4))
    iwae = log_likelihood(run.model, lambda xb: ProgramPosterior(run.guide, xb), x, 100)
    assert ais.mean >= iwae.mean().item() - 3 * ais.se


def test_a_masked_site_counts_only_where_its_mask_is_true():
    """poutine.mask (as Pyro's ELBOs honour it): masked rows add nothing to log p(x, z)."""
    labelled = torch.tensor([True, False, True])

    class Masked(LatentVariableModel):
        name = "masked_test"

        def forward(self, x, idx=None, num_data=None):
            with data_plate(x, idx, num_data):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
                with poutine.mask(mask=labelled):
                    pyro.sample("label", dist.Normal(z, 1.0).to_event(1), obs=x[:, 1:])
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[:, :1])

    x, z = torch.randn(3, 2), torch.randn(3, 1)
    log_lik, _ = log_joint_terms(Masked(2, 1), x, z)
    expected = dist.Normal(z, 1.0).log_prob(x[:, :1])[:, 0] + labelled * dist.Normal(z, 1.0).log_prob(x[:, 1:])[:, 0]
    assert torch.allclose(log_lik, expected, atol=1e-5)


@register_guide("mixture_guide_test")
class MixtureGuide(torch.nn.Module):
    """q(y | x) q(z | x, y): a discrete site in the guide, and no ``posterior`` method."""

    def __init__(self, model=None, num_data=None, hidden_dims=()):
        super().__init__()
        self.logits, self.loc = torch.tensor([0.2, -0.4]), torch.tensor([-1.5, 1.0])

    def forward(self, x, idx=None, num_data=None):
        with data_plate(x, idx, num_data):
            y = pyro.sample("y", dist.Categorical(logits=self.logits.expand(len(x), 2)))
            pyro.sample("z", dist.Normal(self.loc[y].unsqueeze(-1) + 0.5 * x, 0.7).to_event(1))


def test_a_guide_with_a_discrete_site_proposes_its_marginal():
    """The guide's y is summed out of log q(z | x), as the model's is of log p(x, z): the importance
    weights are proper and IWAE converges to the exact log p(x)."""
    model, guide = MixturePrior(), MixtureGuide()
    x = torch.tensor([[-2.0], [0.3], [1.7]])
    q = ProgramPosterior(guide, x)
    values = q.sample((5,))
    assert set(values) == {"z"} and values["z"].shape == (5, 3, 1)
    z = values["z"]
    weights = torch.softmax(guide.logits, -1)
    by_hand = torch.stack([weights[k].log() + dist.Normal(guide.loc[k] + 0.5 * x, 0.7).log_prob(z)[..., 0]
                           for k in range(2)]).logsumexp(0)
    assert torch.allclose(q.log_prob(values), by_hand, atol=1e-5)
    exact, _, _ = model.exact(x)
    estimate = log_likelihood(model, lambda xb: ProgramPosterior(guide, xb), x, 20000)
    assert torch.allclose(estimate, exact, atol=0.02), (estimate, exact)
