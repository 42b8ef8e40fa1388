"""The samplers (pyro_vae.infer.mcmc) against targets with known answers."""

import math
import warnings

import arviz as az
import pytest
import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from pyro_vae.infer import recording
from pyro_vae.infer.mcmc import sampling as mcmc
from pyro_vae.infer.mcmc import adaptation, chees, nuts, trees
from pyro_vae.nn import frozen
from pyro_vae.program.density import latent_layout, log_density_for_sampler, log_joint_terms
from pyro_vae.infer.mcmc.sampling import sample_latents, sampler_target
from pyro_vae.plumbing.registry import get_model, model_names


def gaussian_target(n_points=6, dim=2, seed=0):
    """Independent correlated Gaussians, one per point, and their log density
    (chains, N, L) -> (log p per chain, gradient)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n_points, dim, generator=g) * 2
    factor = torch.randn(n_points, dim, dim, generator=g) * torch.tensor([0.3, 3.0])[:dim]
    covariance = factor @ factor.mT + 0.05 * torch.eye(dim)
    precision = torch.linalg.inv(covariance)

    def log_density(z):
        centred = z - mean
        grad = -(precision @ centred.unsqueeze(-1)).squeeze(-1)
        return 0.5 * (centred * grad).sum((-2, -1)), grad

    return mean, covariance, log_density


def test_draws_match_correlated_gaussians():
    mean, covariance, log_density = gaussian_target()
    init = torch.zeros(3, *mean.shape)
    draws, stats = nuts.sample(log_density, init, warmup=300, samples=1000, seed=1)
    assert draws.shape == (3, 1000, *mean.shape)
    idata = az.from_dict(posterior={"z": draws.numpy()})
    ess = torch.as_tensor(az.ess(idata)["z"].values)
    assert float(az.rhat(idata)["z"].max()) < 1.01
    flat = draws.reshape(-1, *mean.shape)
    sd = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.all((flat.mean(0) - mean).abs() < 5 * sd / ess.sqrt())
    # the variance's Monte Carlo error, with the effective sample size of the squares
    squares = az.from_dict(posterior={"z": ((draws - mean) ** 2).numpy()})
    ess_squares = torch.as_tensor(az.ess(squares, method="mean")["z"].values)
    assert torch.all((flat.var(0) / sd**2 - 1).abs() < 5 * (2 / ess_squares).sqrt())
    # the posterior correlations (up to 0.99 here) are found, not only the variances
    empirical = torch.einsum("snk,snl->nkl", flat - flat.mean(0), flat - flat.mean(0)) / (len(flat) - 1)
    correlation = covariance[:, 0, 1] / (sd[:, 0] * sd[:, 1])
    assert torch.allclose(empirical[:, 0, 1] / empirical.diagonal(dim1=-2, dim2=-1).sqrt().prod(-1), correlation,
                          atol=0.05)
    assert not stats["diverging"].any()
    assert 0.6 < float(stats["acceptance_rate"].mean()) < 1.0


def test_same_seed_same_draws_other_seed_other_draws():
    mean, _, log_density = gaussian_target(n_points=3)
    run = lambda seed: nuts.sample(log_density, torch.zeros(2, *mean.shape), 50, 20, seed)[0]  # noqa: E731
    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def recursive_turning(momenta, inverse_mass):
    """Whether any balanced binary subtree (2, 4, ..., all leaves) of a
    subtree with leaf momenta ``momenta`` (2^d, chains, N, L) turns: the
    checks recursive NUTS makes, one by one."""
    turning = torch.zeros(momenta.shape[1], dtype=torch.bool)
    size = 2
    while size <= len(momenta):
        for start in range(0, len(momenta), size):
            block = momenta[start:start + size]
            turning |= trees.is_turning(block[0], block[-1], block.sum(0), inverse_mass)
        size *= 2
    return turning


def test_checkpointed_uturn_checks_are_the_recursive_ones():
    """Leaf by leaf, with checkpoints holding stale values from an earlier
    subtree, the iterative checks reject a subtree exactly when one of its
    balanced sub-subtrees turns."""
    g = torch.Generator().manual_seed(0)
    slots = 6
    for depth in range(6):
        for _ in range(20):
            momenta = torch.randn(2**depth, 3, 4, 2, generator=g)
            factor = torch.randn(3, 4, 2, 2, generator=g)
            inverse_mass = factor @ factor.mT + 0.1 * torch.eye(2)
            leaves = iter(momenta)

            def leapfrog(z, r, grad, step, inverse_mass):  # hands out the prescribed momenta, H constant
                return z, next(leaves), grad, torch.zeros(3), torch.zeros(3)

            stale = torch.randn(slots, 3, 4, 2, generator=g)
            zeros, yes = torch.zeros(3), torch.ones(3, dtype=torch.bool)
            z = torch.zeros(3, 4, 2)
            sub = trees.Subtree(z, z, z, z, zeros, z, torch.full((3,), -math.inf), z, stale, 2 * stale,
                                       3 * stale, yes, ~yes, zeros, zeros, ~yes)
            turned = torch.zeros(3, dtype=torch.bool)
            for leaf in range(2**depth):
                store, check = trees.checkpoint_masks(leaf, slots, z.device)
                sub = trees.add_leaf(leapfrog, sub, zeros, zeros, inverse_mass, torch.full((3,), 0.5), store, check)
                turned |= sub.failed
                sub = sub._replace(building=yes, failed=~yes)  # go on to the end to see every check
            assert torch.equal(turned, recursive_turning(momenta, inverse_mass))


def test_is_turning_on_a_circle():
    """Momenta along a circular orbit: no U-turn over less than half a turn, a U-turn past it."""
    eye = torch.eye(2).expand(1, 1, 2, 2)

    def arc(angle, n=50):
        t = torch.linspace(0, angle, n)
        return torch.stack([-torch.sin(t), torch.cos(t)], -1).view(n, 1, 1, 2)

    short, long = arc(0.9 * math.pi), arc(1.2 * math.pi)
    assert not trees.is_turning(short[0], short[-1], short.sum(0), eye)
    assert trees.is_turning(long[0], long[-1], long.sum(0), eye)


def test_warmup_windows_are_stans():
    assert adaptation.adaptation_windows(500) == [(75, 100), (100, 150), (150, 250), (250, 450)]
    assert adaptation.adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert adaptation.adaptation_windows(100) == [(15, 90)]  # too short for the defaults: 15% / 75% / 10%
    assert adaptation.adaptation_windows(10) == []


def test_recorded_steps_equal_the_python_ones():
    mean, _, log_density = gaussian_target(n_points=4)
    z = torch.randn(2, *mean.shape)
    leaf, extend = trees.record_steps(log_density, z, slots=5)
    assert isinstance(leaf, torch.fx.GraphModule)  # a recording, not the Python
    g = torch.Generator().manual_seed(1)
    state = lambda: torch.randn(z.shape, generator=g)  # noqa: E731
    ckpt = torch.randn(5, *z.shape, generator=g)
    yes = torch.tensor([True, False])
    sub = trees.Subtree(state(), state(), state(), state(), torch.randn(2), state(), torch.tensor([-1.0, 0.3]),
                               state(), ckpt, 2 * ckpt, 3 * ckpt, yes, ~yes, torch.ones(2), torch.ones(2), ~yes)
    inverse_mass = torch.eye(2).expand(2, 4, 2, 2).contiguous()
    for leaf_number in (2, 3):  # a leaf that stores a checkpoint, and one that checks against it
        args = (*sub, torch.tensor([0.2, -0.3]), torch.tensor([3.0, -2.0]), inverse_mass, torch.rand(2, generator=g),
                *trees.checkpoint_masks(leaf_number, 5, z.device))
        for a, b in zip(leaf(*args), trees.AddLeaf(log_density)(*args)):
            assert torch.allclose(a.float(), b.float(), atol=1e-5)
    tree = trees.Tree(state(), state(), state(), state(), state(), state(), state(), torch.randn(2), state(),
                             torch.randn(2), state(), yes, torch.ones(2, dtype=torch.long), torch.ones(2),
                             torch.ones(2), ~yes)
    args = (*tree, *sub, torch.tensor([True, False]), torch.rand(2, generator=g), inverse_mass, yes)
    for a, b in zip(extend(*args), trees._extend_flat(*args)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("failure", ["disagrees", "raises"])
def test_a_density_that_cannot_be_recorded_runs_in_python(failure):
    """A recording that differs from the Python (as when code branches on
    values) or that fails is not used: the Python runs, with a warning."""
    mean, _, gaussian = gaussian_target(n_points=2)

    def log_density(z):
        log_p, grad = gaussian(z)
        if get_proxy_mode() is not None:  # recording: stands for a branch the recording would hold fixed
            if failure == "raises":
                raise RuntimeError("cannot record this")
            log_p = log_p + 1.0
        return log_p, grad

    z = torch.zeros(1, *mean.shape)
    with pytest.warns(UserWarning, match="could not be recorded"):
        leaf, _ = trees.record_steps(log_density, z, slots=3)
    assert isinstance(leaf, trees.AddLeaf)
    draws, _ = nuts.sample(gaussian, torch.zeros(1, *mean.shape), 30, 10, seed=0)
    with pytest.warns(UserWarning):
        same, _ = nuts.sample(log_density, torch.zeros(1, *mean.shape), 30, 10, seed=0)
    assert torch.allclose(draws, same, atol=1e-4)  # the Python path samples the same chain


BUILT_IN_MODELS = [n for n in model_names() if get_model(n).__module__.startswith("pyro_vae.models.")]


@pytest.mark.parametrize("name", BUILT_IN_MODELS)
def test_nuts_target_is_the_model_program(name):
    """The density NUTS samples (the model's prior and likelihood) is the one
    the model's Pyro program defines, for every registered model."""
    torch.manual_seed(0)
    model = get_model(name)(data_dim=6, latent_dim=3, hidden_dims=(5,))
    x = torch.rand(4, 6).round() if getattr(model, "binary_data", False) else torch.randn(4, 6)
    layout = latent_layout(model, x)
    if layout.dim == 0:  # only discrete latents (gmm, categorical_mlp), summed out: nothing for NUTS to move
        with pytest.raises(ValueError, match="no continuous latent"):
            sample_latents(model, x, chains=2, warmup=1, samples=1)
        return
    z = torch.randn(2, 4, layout.dim)  # the flat unconstrained latents: z itself for one-site models
    with frozen(model):
        value, grad = log_density_for_sampler(model, x, chains=2)(z)
        values, log_det = layout.unflatten(z)
        log_lik, log_prior = log_joint_terms(model, x, values)
        assert torch.allclose(value, (log_lik + log_prior + log_det).sum(-1), atol=1e-4)
        z_ = z.clone().requires_grad_(True)
        with torch.enable_grad():
            values, log_det = layout.unflatten(z_)
            (expected,) = torch.autograd.grad((sum(log_joint_terms(model, x, values)) + log_det).sum(), z_)
        assert torch.allclose(grad, expected, atol=1e-4)


def covariance_z_scores(draws, mean, covariance):
    """(C_hat - C) / its Monte Carlo standard error, entry by entry, per point: C_hat the mean over
    draws of (z - mu)(z - mu)^T at the exact mean, its error from the entries' own effective sample
    sizes and their exact variances under the Gaussian, C_kk C_ll + C_kl^2."""
    centred = draws - mean
    products = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (chains, samples, N, L, L)
    ess = torch.as_tensor(az.ess(az.from_dict(posterior={"c": products.numpy()}), method="mean")["c"].values)
    variance = covariance.diagonal(dim1=-2, dim2=-1)
    sd = (variance.unsqueeze(-1) * variance.unsqueeze(-2) + covariance**2).sqrt()
    return (products.mean((0, 1)) - covariance) / (sd / ess.sqrt())


def test_compiled_sampler_matches_the_gaussian():
    """``compile=True``: the leaf steps and the tree merge go through
    Inductor, with no warning (no fallback to the recording or the Python),
    and still sample the exact posterior: means and covariances within
    Monte Carlo error."""
    mean, covariance, log_density = gaussian_target(n_points=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        leaf, extend = trees.record_steps(log_density, torch.zeros(2, *mean.shape), slots=4, compile=True)
        draws, stats = nuts.sample(log_density, torch.zeros(2, *mean.shape), 150, 300, seed=2, compile=True,
                                   max_tree_depth=4)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    for compiled in (leaf, extend):  # compiled, not the recording or the Python
        assert not isinstance(compiled, (torch.fx.GraphModule, trees.AddLeaf))
    flat = draws.reshape(-1, *mean.shape)
    idata = az.from_dict(posterior={"z": draws.numpy()})
    ess = torch.as_tensor(az.ess(idata)["z"].values)
    sd = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.all((flat.mean(0) - mean).abs() < 5 * sd / ess.sqrt())
    # measured: |z| < 1 for every entry (ESS of the products 200-330 of 600 draws)
    assert covariance_z_scores(draws, mean, covariance).abs().max() < 5
    assert not stats["diverging"].any()
    again, _ = nuts.sample(log_density, torch.zeros(2, *mean.shape), 150, 300, seed=2, compile=True,
                                   max_tree_depth=4)
    assert torch.equal(draws, again)  # the compiled kernels are deterministic too


def test_a_failed_compilation_runs_the_recording(monkeypatch):
    mean, _, log_density = gaussian_target(n_points=2)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch._inductor, "standalone_compile", no_compiler)
    with pytest.warns(UserWarning, match="runs uncompiled: compiling failed \\(no C\\+\\+ compiler here\\)"):
        leaf, extend = trees.record_steps(log_density, torch.zeros(1, *mean.shape), slots=3, compile=True)
    assert isinstance(leaf, torch.fx.GraphModule) and isinstance(extend, torch.fx.GraphModule)


@pytest.mark.parametrize("compile", [False, True])
def test_one_recording_follows_new_weights_and_data(compile):
    """Monte Carlo EM's E-steps and repeated calls reuse one recording
    (compiled or not): weights changed in place and new data of the same
    shape reach it."""
    model = get_model("bernoulli_mlp")(data_dim=6, latent_dim=2, hidden_dims=(5,)).eval()
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    first = sampler_target(model, x, 1)
    sample_latents(model, x, chains=1, warmup=10, samples=5, seed=0, compile=compile)
    assert len(first.recorded) == 1
    with torch.no_grad():
        model.decoder[0].weight.mul_(-2.0)
    y = 1 - x
    reused = sample_latents(model, y, chains=1, warmup=30, samples=20, seed=1, compile=compile)[0]
    assert sampler_target(model, y, 1).recorded is first.recorded and len(first.recorded) == 1
    z = torch.randn(1, 4, 2)
    with frozen(model):
        assert torch.allclose(first.log_density(z)[0], log_density_for_sampler(model, y, 1)(z)[0])
    mcmc.TARGETS.clear()  # a fresh recording at the new weights and data samples the same chain
    fresh = sample_latents(model, y, chains=1, warmup=30, samples=20, seed=1, compile=compile)[0]
    assert torch.allclose(reused, fresh, atol=1e-5)


def test_a_recording_keeps_arguments_that_were_one_tensor_apart():
    """The first tree step sees one tensor as both ends of the trajectory;
    its recording must still read the two ends from their own inputs."""
    add = recording.record(lambda a, b: (a + 2 * b,), (torch.ones(3),) * 2, name="test")
    assert torch.equal(add(torch.ones(3), torch.zeros(3))[0], torch.ones(3))


def test_chees_matches_correlated_gaussians():
    """ChEES-HMC, every point its own four chains (rows chain-major), on
    correlated Gaussians with correlations up to 0.99."""
    mean, covariance, _ = gaussian_target()
    precision = torch.linalg.inv(covariance)
    n_points, dim = mean.shape

    def log_density(z):  # one row per (chain, point)
        centred = z.reshape(-1, n_points, dim) - mean
        grad = -(precision @ centred.unsqueeze(-1)).squeeze(-1)
        return (0.5 * (centred * grad).sum(-1)).reshape(-1), grad.reshape(z.shape)

    draws, stats = chees.sample(log_density, torch.zeros(4 * n_points, 1, dim), 4, warmup=300, samples=1000, seed=0)
    draws = draws.reshape(4, n_points, 1000, dim).transpose(1, 2)  # (chains, samples, N, L)
    idata = az.from_dict(posterior={"z": draws.numpy()})
    ess = torch.as_tensor(az.ess(idata)["z"].values)
    assert float(az.rhat(idata)["z"].max()) < 1.01
    flat = draws.reshape(-1, n_points, dim)
    sd = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.all((flat.mean(0) - mean).abs() < 5 * sd / ess.sqrt())
    squares = az.from_dict(posterior={"z": ((draws - mean) ** 2).numpy()})
    ess_squares = torch.as_tensor(az.ess(squares, method="mean")["z"].values)
    assert torch.all((flat.var(0) / sd**2 - 1).abs() < 5 * (2 / ess_squares).sqrt())
    assert not stats["diverging"].any()
    assert stats["n_steps"].shape == (4 * n_points, 1000) and int(stats["n_steps"].min()) >= 1
    again, _ = chees.sample(log_density, torch.zeros(4 * n_points, 1, dim), 4, warmup=300, samples=1000, seed=0)
    assert torch.equal(draws, again.reshape(4, n_points, 1000, dim).transpose(1, 2))


def test_chees_jitter_is_the_van_der_corput_sequence():
    assert [chees.jitter(i) for i in range(1, 8)] == [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
