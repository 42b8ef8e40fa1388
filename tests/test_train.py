import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.data import load_dataset
from pyro_vae.program.density import log_joint
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.program.estimators import elbo_terms
from pyro_vae.infer.svi.train import make_svi, train_epoch


def _setup(seed=0):
    pyro.set_rng_seed(seed)
    data = load_dataset("digits")
    model = get_model("bernoulli_mlp")(data.data_dim, 2, (64,))
    guide = get_guide("amortized")(model, data.num_train, (64,))
    return data, model, guide


def elbo_per_example(model, proposal, x):
    return elbo_terms(model, proposal, x)[2].mean().item()


def test_elbo_rises_on_digits():
    data, model, guide = _setup()
    before = elbo_per_example(model, guide.posterior, data.test_x)
    svi = make_svi(model, guide, lr=3e-3)
    history = [train_epoch(svi, data, 64, progress=False)[0] for _ in range(15)]
    after = elbo_per_example(model, guide.posterior, data.test_x)
    assert after > before + 10, (before, after)
    assert history[-1] > history[0] + 5
    # nats per example for 64 binary pixels: bounded by 64 log 2 from the start
    assert -64 * 0.7 - 20 < after < 0


def test_every_parameter_is_trained():
    data, model, guide = _setup()
    start = {k: v.clone() for k, v in [*model.state_dict().items(), *guide.state_dict().items()]}
    svi = make_svi(model, guide, lr=1e-2)
    train_epoch(svi, data, 128, progress=False)
    end = dict([*model.state_dict().items(), *guide.state_dict().items()])
    assert all(not torch.equal(start[k], end[k]) for k in start)


def test_second_model_in_same_process_trains_its_own_parameters():
    # pyro.module returns stored params by name; make_svi clears the store so a
    # second model built in the same process is not shadowed by the first.
    for _ in range(2):
        data, model, guide = _setup()
        weight = model.decoder[0].weight.clone()
        svi = make_svi(model, guide, lr=1e-2)
        train_epoch(svi, data, 128, progress=False)
        assert not torch.equal(weight, model.decoder[0].weight)


def test_same_seed_same_numbers():
    results = []
    for _ in range(2):
        data, model, guide = _setup(seed=3)
        svi = make_svi(model, guide, lr=1e-3)
        results.append([train_epoch(svi, data, 100, progress=False)[0] for _ in range(2)])
        results[-1].append(model.decoder[0].weight.sum().item())
    assert results[0] == results[1]


def test_the_elbo_estimate_is_per_example_whatever_the_batching():
    """With the exact posterior as q (pPCA), log p(x, z) - log q(z | x) = log p(x) at every z: the
    estimate per example is the closed-form log p(x) exactly, for any batch size and number of
    draws. A per-batch or N / B scale (the training loss's) would miss it by a factor."""
    data = load_dataset("linear_gaussian", num_train=50, num_test=120)
    model = get_model("linear_gaussian")(data.data_dim, 2)
    exact = model.log_marginal(data.test_x)
    for batch_size, samples in ((120, 1), (50, 1), (7, 3)):
        reconstruction, kl, elbo = elbo_terms(model, model.exact_posterior, data.test_x, samples=samples,
                                              batch_size=batch_size)
        assert elbo.shape == exact.shape
        assert torch.allclose(elbo, exact, atol=1e-3), (batch_size, (elbo - exact).abs().max())
        assert torch.allclose(reconstruction - kl, elbo)


def test_minibatch_loss_is_the_full_data_scale_estimate():
    """A step's loss on B of N points is -(N / B) sum_i [log p(x_i, z_i) - log q(z_i | x_i)]
    at the guide's draws: an unbiased one-sample estimate of the full-data -ELBO."""
    data, model, guide = _setup()
    idx = torch.arange(10, 42)
    x = data.train_batch(idx)
    guide_trace = poutine.trace(guide).get_trace(x, idx, data.num_train)
    z = guide_trace.nodes["z"]["value"]
    loss = Trace_ELBO().loss(model, poutine.replay(guide, trace=guide_trace), x, idx, data.num_train)
    with torch.no_grad():
        expected = -(data.num_train / len(idx)) * (log_joint(model, x, z) - guide.posterior(x).log_prob(z)).sum()
    assert abs(loss - expected.item()) < 1e-4 * abs(expected.item())
    assert abs(loss) > 1000  # the full-data scale: about N times a per-example ELBO of tens of nats
