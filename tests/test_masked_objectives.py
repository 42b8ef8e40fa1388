"""Every objective counts a site's log density masked and scaled as Pyro's Trace_ELBO does (issue #36):
on models that hide part of their observations, with ``poutine.mask`` and with ``obs_mask``, each
objective's value at one particle is Trace_ELBO's estimate. The hidden observations are set far
from anything the model predicts (50, against a likelihood of scale 0.5), so an objective that
counted them would be off by thousands of nats."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.nn import data_plate
from pyro_vae.objectives import ELBOS, make_objective
from pyro_vae.objectives.enumerated import EnumELBO
from pyro_vae.objectives.relaxed import RELAXES, RelaxedELBO, Temperature

HIDDEN = 50.0  # the value a hidden label is read as: far in the tail of N(z, 0.5)
ROWS = 40


def rows(seed=0):
    """(ROWS, 2): an observation and a label, the label hidden (NaN) on every third row."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, 2, generator=generator)
    x[::3, 1] = float("nan")
    return x


def shown(x):
    return ~torch.isnan(x[:, -1])


class MaskedModel(torch.nn.Module):
    """z ~ N(0, 1); x ~ N(w z, 1); label ~ N(z, 0.5), counted where it is shown: under
    ``poutine.mask`` ("mask") or as ``obs_mask`` ("obs_mask", the hidden labels imputed by the guide)."""

    def __init__(self, how):
        super().__init__()
        self.how, self.weight = how, torch.nn.Parameter(torch.tensor(1.3))

    def forward(self, x, idx=None, num_data=None):
        pyro.module("model", self)
        with data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.weight * z, 1.0).to_event(1), obs=x[:, :1])
            label = dist.Normal(z, 0.5).to_event(1)
            if x.shape[-1] < 2:  # a dreamt x (wake-sleep's sleep phase) has no label column
                return
            observed = x[:, 1:].nan_to_num(HIDDEN)
            if self.how == "mask":
                with poutine.mask(mask=shown(x)):
                    pyro.sample("label", label, obs=observed)
            else:
                pyro.sample("label", label, obs=observed, obs_mask=shown(x))


class MaskedGuide(torch.nn.Module):
    """q(z | x) = N(a x + b, s); for the obs_mask model, q(label | z) = N(z, 0.7) on the hidden rows."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.gain, self.bias, self.log_scale = (torch.nn.Parameter(torch.tensor(v)) for v in (0.5, 0.1, -0.5))

    def forward(self, x, idx=None, num_data=None):
        pyro.module("guide", self)
        with data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(self.gain * x[:, :1] + self.bias, self.log_scale.exp()).to_event(1))
            if self.how == "obs_mask" and x.shape[-1] > 1:
                with poutine.mask(mask=~shown(x)):
                    pyro.sample("label_unobserved", dist.Normal(z, 0.7).to_event(1))


def value_at_seed(objective, model, guide, x, seed):
    """The loss ``objective`` reports for one step on the minibatch (its first half, of ``x``), at ``seed``."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    idx = torch.arange(ROWS // 2)
    return objective.loss_and_grads(model, guide, x[idx], idx, ROWS)


PARTICLE_BOUNDS = ["iwae", "iwae-dreg", "rws", "vimco", "wake-sleep"]


@pytest.mark.parametrize("how", ["mask", "obs_mask"])
@pytest.mark.parametrize("elbo", PARTICLE_BOUNDS)
def test_a_particle_bound_at_one_particle_is_trace_elbo_on_a_masked_model(elbo, how):
    """With K = 1 and the same draws (the same seed: the guide's one Normal draw per site), each
    bound's value is Trace_ELBO's, on the full-data scale of a minibatch (N / B = 2)."""
    model, guide, x = MaskedModel(how), MaskedGuide(how), rows()
    for seed in range(3):
        ours = value_at_seed(make_objective(elbo), model, guide, x, seed)
        pyro.clear_param_store()
        torch.manual_seed(seed)
        idx = torch.arange(ROWS // 2)
        trace = Trace_ELBO().loss(model, guide, x[idx], idx, ROWS)
        assert ours == pytest.approx(trace, rel=1e-5, abs=1e-3), (seed, ours, trace)


def test_the_score_function_value_and_its_average_baseline_count_only_shown_labels():
    """The score-function ELBO (Pyro's TraceGraph_ELBO) at the same draws as Trace_ELBO, and its
    running baseline, after one step, the mean over the minibatch of the per-point masked ELBO:
    -loss / N on the full-data scale."""
    model, guide, x = MaskedModel("mask"), MaskedGuide("mask"), rows()
    objective = make_objective("score-function", baseline="average")
    ours = value_at_seed(objective, model, guide, x, 0)
    pyro.clear_param_store()
    torch.manual_seed(0)
    idx = torch.arange(ROWS // 2)
    trace = Trace_ELBO().loss(model, guide, x[idx], idx, ROWS)
    assert ours == pytest.approx(trace, rel=1e-5)
    assert objective.average.item() == pytest.approx(-trace / ROWS, rel=1e-5)


class MaskedCategorical(torch.nn.Module):
    """y ~ OneHotCategorical(uniform over 3); x ~ N(m . y, 1); label ~ N(m . y, 0.5) where shown
    (``poutine.mask``), read as ``hidden`` where not."""

    def __init__(self):
        super().__init__()
        self.means, self.hidden = torch.nn.Parameter(torch.tensor([-1.5, 0.0, 2.0])), HIDDEN

    def forward(self, x, idx=None, num_data=None):
        pyro.module("model", self)
        with data_plate(x, idx, num_data):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(len(x), 3)))
            loc = (y * self.means).sum(-1, keepdim=True)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[:, :1])
            with poutine.mask(mask=shown(x)):
                pyro.sample("label", dist.Normal(loc, 0.5).to_event(1), obs=x[:, 1:].nan_to_num(self.hidden))


class CategoricalGuide(torch.nn.Module):
    """q(y | x) = OneHotCategorical(logits a x + b)."""

    def __init__(self):
        super().__init__()
        self.gain, self.bias = torch.nn.Parameter(torch.tensor([-1.0, 0.0, 1.0])), torch.nn.Parameter(torch.zeros(3))

    def forward(self, x, idx=None, num_data=None):
        pyro.module("guide", self)
        with data_plate(x, idx, num_data):
            pyro.sample("y", dist.OneHotCategorical(logits=self.gain * x[:, :1] + self.bias))


def test_straight_through_relaxed_is_the_exact_elbo_in_expectation_on_a_masked_model():
    """relaxed-st's forward value is a one-hot draw from q with the KL to the prior in closed form:
    an unbiased estimate of -ELBO, which EnumELBO computes exactly (summing q's three values)."""
    model, guide, x = MaskedCategorical(), CategoricalGuide(), rows()
    exact = EnumELBO().loss(model, guide, x)
    torch.manual_seed(0)
    objective = make_objective("relaxed-st")
    draws = torch.tensor([objective.loss(model, guide, x) for _ in range(300)])
    se = draws.std() / len(draws) ** 0.5
    assert abs(draws.mean().item() - exact) < 4 * se, (draws.mean().item(), exact, se.item())


@pytest.mark.parametrize("elbo", [name for name, objective in ELBOS.items() if objective.temperature])
def test_a_relaxed_value_does_not_see_the_hidden_labels(elbo):
    """The Gumbel-softmax value estimates a relaxed surrogate, not the ELBO (``relaxed``'s docstring),
    so it is checked by what masking means: at the same draws, the value is the same whatever the
    hidden labels read as."""
    model, guide, x = MaskedCategorical(), CategoricalGuide(), rows()
    values = []
    for hidden in (HIDDEN, -7.0):
        model.hidden = hidden
        torch.manual_seed(0)
        values.append(make_objective(elbo).loss(model, guide, x))
    assert values[0] == values[1]
    x[1, 1] = 9.0  # and a label the model does count (row 1 is shown) moves it
    torch.manual_seed(0)
    assert make_objective(elbo).loss(model, guide, x) > values[0] + 10


def test_relaxed_traces_are_pyros_pair_so_several_particles_run():
    """``_get_trace`` returns (model_trace, guide_trace), as ``ELBO._get_traces`` unpacks it for each
    particle; the relaxed site keeps the discrete q it replaced, and the model sees the relaxed value."""
    model, guide, x = MaskedCategorical(), CategoricalGuide(), rows()
    objective = RelaxedELBO(temperature=Temperature(0.7))
    objective.num_particles = 2
    pairs = list(objective._get_traces(model, guide, (x,), {}))
    assert len(pairs) == 2
    for model_trace, guide_trace in pairs:
        relaxed = guide_trace.nodes["y"]
        assert isinstance(relaxed["infer"][RELAXES], dist.OneHotCategorical)
        assert torch.equal(model_trace.nodes["y"]["value"], relaxed["value"])
        assert relaxed["value"].sum(-1).allclose(torch.ones(ROWS)) and (relaxed["value"] < 1).all()
