import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.registry import register_guide

class CategoricalPosterior:
    """q(z | x) = prod_m OneHotCategorical(z_m; softmax(logits_m)) over the sites ``names``, as the
    estimators use a posterior (``pyro_vae.program.posteriors``): draws are dicts site -> (*shape, N, K), the log
    density of such a dict is the sum over the sites, and the mean is the class probabilities."""

    def __init__(self, logits, names):
        self.names = names
        self.sites = [dist.OneHotCategorical(logits=logits[..., m, :]) for m in range(len(names))]

    def sample(self, sample_shape=()):
        return {name: q.sample(sample_shape) for name, q in zip(self.names, self.sites)}

    def log_prob(self, values):
        return sum(q.log_prob(values[name]) for name, q in zip(self.names, self.sites))

    @property
    def mean(self):
        return {name: q.probs for name, q in zip(self.names, self.sites)}

    def entropy(self):
        return sum(q.entropy() for q in self.sites)

@register_guide("categorical_mlp")
class CategoricalGuide(nn.Module):
    """q(z | x) = prod_m OneHotCategorical(z_m; softmax(g(x)_m)), g an MLP giving M x K logits per point:
    the encoder of Jang, Gu & Poole (2016) for the ``categorical_mlp`` model, amortized over x.

    The guide's sites are plain ``OneHotCategorical`` draws: ``--elbo enum`` enumerates them (the exact
    ELBO), ``score-function`` and ``rws`` weight them, and ``--elbo relaxed`` / ``relaxed-st`` swap them
    for their Gumbel-softmax relaxations (``pyro_vae.objectives.relaxed``)."""

    amortized = True
    reparameterisable = False  # discrete draws: --elbo iwae and iwae-dreg are refused

    def __init__(self, model, num_data, hidden_dims=(400,)):
        super().__init__()
        self.categories = getattr(model, "categories", None)
        if self.categories is None:
            raise ValueError(f"guide categorical_mlp is the encoder of the categorical_mlp model, not of {model.name}")
        self.names = [f"z_{m}" for m in range(model.latent_dim)]
        self.encoder = mlp([model.data_dim, *hidden_dims, model.latent_dim * self.categories])

    def logits(self, x):
        """(N, M, K) logits, normalised per variable."""
        logits = self.encoder(x).unflatten(-1, (len(self.names), self.categories))
        return logits - logits.logsumexp(-1, keepdim=True)

    def posterior(self, x, idx=None, **unused):
        """q(z | x) for the rows of ``x`` (:class:`CategoricalPosterior`)."""
        return CategoricalPosterior(self.logits(x), self.names)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        logits = self.logits(x)
        with data_plate(x, idx, num_data):
            for m, name in enumerate(self.names):
                pyro.sample(name, dist.OneHotCategorical(logits=logits[..., m, :]))
