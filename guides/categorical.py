"""Guides for a model whose one latent site ``"z"`` is a categorical assignment (``gmm``).

- ``enumerated``: no guide sites at all: ``--elbo enum`` sums z out of the model exactly, so the
  objective is the exact log-likelihood and q(z | x) is the exact posterior;
- ``categorical_meanfield``: one free q(z_i) = Categorical(softmax(l_i)) per training point, no
  encoder (classical mean-field VB);
- ``categorical_amortized``: q(z | x) = Categorical(softmax(f(x))), one MLP encoder (reweighted
  wake-sleep, the score-function ELBO).

The two with a site mark it ``infer={"enumerate": "parallel"}``: under ``--elbo enum``
(``TraceEnum_ELBO``) the expectation over q is then a sum over the K values, exact; other objectives
draw z. ``posterior(x)`` is a ``OneHotCategorical`` (its ``mean``, the probabilities, is what the
figures and active units read); for a new point without a table row it is the exact posterior, the
optimum of the point's ELBO with the model fixed.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.program.enumeration import exact_posterior
from pyro_vae.plumbing.registry import register_guide


def categories(model, guide_name):
    """K, the number of values of the model's assignment."""
    k = getattr(model, "num_components", None)
    if k is None:
        raise UsageError(f"guide {guide_name} is a q over a mixture's assignment; model {model.name} has none "
                         f"(use it with gmm)")
    return k


@register_guide("enumerated")
class EnumeratedGuide(nn.Module):
    """No sites: the model's discrete z is summed out by ``--elbo enum`` (``TraceEnum_ELBO`` with the
    model's ``enumerate`` mark), so SVI follows the exact marginal likelihood's gradient."""

    amortized = True
    objectives = ("enum",)  # the only objective under which a guide without sites is complete

    def __init__(self, model, num_data, hidden_dims=()):
        super().__init__()
        self.model = [model]  # a list hides it from nn.Module: not this guide's parameters

    def posterior(self, x, idx=None, fixed=None, **unused):
        return exact_posterior(self.model[0], x, fixed)

    def forward(self, x, idx=None, num_data=None):
        pass


@register_guide("categorical_meanfield")
class CategoricalMeanField(nn.Module):
    """q(z_1, ..., z_N) = prod_i Categorical(z_i; softmax(l_i)): the logits l_i one row per training
    point of an ``nn.Embedding(N, K, sparse=True)`` (``--local-lr``, like ``meanfield``'s tables)."""

    amortized = False
    reparameterisable = False

    def __init__(self, model, num_data, hidden_dims=()):
        super().__init__()
        self.model = [model]
        self.num_data = num_data
        self.logits = nn.Embedding(num_data, categories(model, self.name), sparse=True)
        nn.init.zeros_(self.logits.weight)

    def posterior(self, x, idx=None, fixed=None, **unused):
        if idx is not None:
            return dist.OneHotCategorical(logits=self.logits(idx))
        return exact_posterior(self.model[0], x, fixed)

    def forward(self, x, idx=None, num_data=None):
        if (num_data or len(x)) != self.num_data:
            raise ValueError(f"{self.name} guide has a row for each of {self.num_data} training points, not for a "
                             f"dataset of {num_data or len(x)}; use posterior(x) for new data")
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data) as rows:
            pyro.sample("z", dist.Categorical(logits=self.logits(rows)), infer={"enumerate": "parallel"})


@register_guide("categorical_amortized")
class CategoricalAmortized(nn.Module):
    """q(z | x) = Categorical(z; softmax(f(x))), f an MLP (``--hidden-dims``) shared by every point."""

    amortized = True
    reparameterisable = False

    def __init__(self, model, num_data, hidden_dims=(400,)):
        super().__init__()
        self.encoder = mlp([model.data_dim, *hidden_dims, categories(model, self.name)])

    def posterior(self, x, idx=None, **unused):
        return dist.OneHotCategorical(logits=torch.log_softmax(self.encoder(x), -1))

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            pyro.sample("z", dist.Categorical(logits=self.encoder(x)), infer={"enumerate": "parallel"})
