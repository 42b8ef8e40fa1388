import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.plumbing.registry import get_guide, get_model, guide_names, model_names


@pytest.mark.parametrize("name", ["bernoulli_mlp", "gaussian_mlp"])
def test_model_trace_shapes_and_full_data_scale(name):
    model = get_model(name)(data_dim=12, latent_dim=3, hidden_dims=(16, 8))
    x = torch.rand(5, 12).round()
    idx = torch.tensor([0, 3, 7, 8, 9])
    trace = poutine.trace(model).get_trace(x, idx, 40)
    trace.compute_log_prob()
    z, obs = trace.nodes["z"], trace.nodes["x"]
    assert z["value"].shape == (5, 3)
    assert obs["fn"].event_shape == (12,) and obs["fn"].batch_shape == (5,)
    # the data plate scales a minibatch of 5 out of 40 up to the full data
    assert z["scale"] == pytest.approx(8.0) and obs["scale"] == pytest.approx(8.0)
    assert torch.equal(trace.nodes["data"]["value"], idx)
    # decoder weights are registered as (point-estimate) params
    assert any(site["type"] == "param" for site in trace.nodes.values())


def test_hidden_dims_mirror_between_encoder_and_decoder():
    model = get_model("bernoulli_mlp")(data_dim=20, latent_dim=2, hidden_dims=(16, 8))
    guide = get_guide("amortized")(model, 100, (16, 8))
    decoder_sizes = [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)]
    encoder_sizes = [m.out_features for m in guide.encoder if isinstance(m, torch.nn.Linear)]
    assert decoder_sizes == [8, 16, 20]
    assert encoder_sizes == [16, 8, 4]


def test_amortized_guide_shapes_and_subsample():
    model = get_model("bernoulli_mlp")(data_dim=12, latent_dim=3)
    guide = get_guide("amortized")(model, 40)
    x = torch.rand(5, 12).round()
    idx = torch.tensor([1, 2, 3, 4, 5])
    trace = poutine.trace(guide).get_trace(x, idx, 40)
    assert trace.nodes["z"]["value"].shape == (5, 3)
    assert torch.equal(trace.nodes["data"]["value"], idx)
    q = guide.posterior(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    assert torch.all(q.stddev > 0)


def test_registry_names_and_errors():
    assert {"bernoulli_mlp", "gaussian_mlp"} <= set(model_names())
    assert "amortized" in guide_names()
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        get_model("nope")
    with pytest.raises(KeyError, match="unknown guide 'nope'"):
        get_guide("nope")


def test_gaussian_likelihood_has_bounded_scale():
    model = get_model("gaussian_mlp")(data_dim=6, latent_dim=2)
    p = model.likelihood(torch.randn(4, 2))
    assert torch.all(p.base_dist.scale >= model.min_scale)
    assert torch.all((p.mean >= 0) & (p.mean <= 1))


def test_log_joint_terms_match_trace():
    from pyro_vae.program.density import log_joint_terms

    model = get_model("bernoulli_mlp")(data_dim=12, latent_dim=3)
    x = torch.rand(5, 12).round()
    trace = poutine.trace(model).get_trace(x)
    trace.compute_log_prob()
    log_lik, log_prior = log_joint_terms(model, x, trace.nodes["z"]["value"].unsqueeze(0))
    assert torch.allclose(log_lik[0], trace.nodes["x"]["log_prob"], atol=1e-5)
    assert torch.allclose(log_prior[0], trace.nodes["z"]["log_prob"], atol=1e-5)


@pytest.mark.parametrize("form", ["fused", "aten"])
def test_softplus_is_torchs_with_its_gradient(form, monkeypatch):
    """pyro_vae.nn.softplus (the hidden activation, and the Bernoulli's log-normaliser) in either form,
    the fused one and ATen's, is F.softplus to float rounding over the whole range, and so is its
    gradient, sigmoid; the form is the processor's (FUSED_SOFTPLUS_CPUS), and a recording keeps it."""
    import torch.nn.functional as F
    from torch.fx.experimental.proxy_tensor import make_fx

    import pyro_vae.nn as nn_module
    from pyro_vae.nn import ACTIVATIONS, Softplus, softplus

    expected = "fused" if torch.backends.cpu.get_cpu_capability() in nn_module.FUSED_SOFTPLUS_CPUS else "aten"
    assert nn_module.CPU_SOFTPLUS == expected
    monkeypatch.setattr(nn_module, "CPU_SOFTPLUS", form)
    x = torch.cat([torch.linspace(-120, 120, 2001), torch.tensor([0.0, -1e-8, 1e-8, 25.0])]).requires_grad_(True)
    value = softplus(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.allclose(value, F.softplus(x), rtol=1e-6, atol=2e-7)
    assert torch.allclose(grad, torch.sigmoid(x), rtol=1e-6, atol=1e-7)
    x64 = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (x64,)) and torch.autograd.gradgradcheck(softplus, (x64,))
    assert ACTIVATIONS["softplus"] is Softplus
    # through a tensor subclass (TraceGraph_ELBO's provenance tracking) the gradient still flows
    from pyro.ops.provenance import track_provenance

    tracked = track_provenance(x, frozenset({"z"}))
    (through,) = torch.autograd.grad(softplus(tracked).sum(), x)
    assert torch.allclose(through, grad)
    # a recording (make_fx, which the samplers and compiled SVI compile) keeps the form it was made with
    recorded = make_fx(lambda v: torch.autograd.grad(softplus(v).sum(), v))(x.detach().requires_grad_(True))
    targets = {str(node.target) for node in recorded.graph.nodes}
    fused = "aten.softplus.default" not in targets and "aten.sigmoid.default" in targets
    assert fused == (form == "fused"), targets
    monkeypatch.setattr(nn_module, "CPU_SOFTPLUS", "aten" if form == "fused" else "fused")
    (replayed,) = recorded(x.detach().requires_grad_(True))
    assert torch.equal(replayed, grad)


def test_softplus_without_grad_is_torchs_and_leaves_its_input():
    """Without autograd (evaluation, IWAE) softplus runs in place on a buffer of its own: F.softplus to
    float rounding, the argument untouched, and a recording made with grad off replays it; the
    Bernoulli's log density is the same with grad and without."""
    import torch.nn.functional as F
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_vae.nn import BernoulliLogits, softplus

    x = torch.cat([torch.linspace(-120, 120, 2001), torch.tensor([0.0, -1e-8, 1e-8, 25.0])])
    before = x.clone()
    with torch.no_grad():
        value = softplus(x)
    assert torch.allclose(value, F.softplus(x), rtol=1e-6, atol=2e-7)
    assert torch.equal(x, before)
    assert torch.equal(softplus(x), value)  # grad mode on, but nothing requires grad: the same form
    recorded = make_fx(softplus)(x)
    assert any(str(node.target) == "aten.exp_.default" for node in recorded.graph.nodes)
    assert torch.equal(recorded(x), value) and torch.equal(x, before)
    logits = torch.randn(7, 3, 784, requires_grad=True)
    data = torch.bernoulli(torch.full((3, 784), 0.3))
    with_grad = BernoulliLogits(logits=logits).log_prob(data)
    with torch.no_grad():
        without = BernoulliLogits(logits=logits).log_prob(data)
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.allclose(with_grad, without, atol=1e-6)
