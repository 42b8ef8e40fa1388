"""A VAE whose latent is discrete: M one-hot variables of K classes (Jang, Gu & Poole 2016)."""

import math

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.nn import BernoulliLogits, data_plate, mlp
from pyro_vae.program.density import MAX_ENUMERATION, log_joint
from pyro_vae.plumbing.registry import register_model

from .base import LatentVariableModel

# rows x joint configurations x data dimensions per chunk of the exact log p(x)
EXACT_CHUNK_ELEMENTS = 2**24


def concatenate(values):
    """The one-hot values of the M sites side by side, (..., N, M K), their batch shapes broadcast (under
    enumeration each site has its own dimension left of the data plate, so the result holds all K^M
    joint configurations)."""
    shape = torch.broadcast_shapes(*(value.shape[:-1] for value in values))
    return torch.cat([value.expand(*shape, value.shape[-1]) for value in values], -1)


@register_model("categorical_mlp")
class CategoricalMLP(LatentVariableModel):
    """p(z) = prod_m OneHotCategorical(z_m; 1/K), m = 1..M, and p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d)),
    f an MLP on the M one-hot vectors side by side (Jang, Gu & Poole 2016: M = 20, K = 10 on MNIST).

    M is ``latent_dim`` (``--latent-dim``) and K is ``categories`` (``--categories``). The program has one
    site per variable, ``z_0`` .. ``z_{M-1}``, each a ``OneHotCategorical`` with batch shape (N,): so each has
    an enumerable support, and parallel enumeration (``TraceEnum_ELBO``, ``pyro_vae.program.density``) gives every
    site its own dimension and sums the K^M joint configurations. (One site of event shape (M, K) would not
    enumerate: ``.to_event`` switches enumeration off, and a batched site enumerates K values, not K^M.)

    Where K^M <= ``density.MAX_ENUMERATION`` every evaluation sums z out exactly and :meth:`log_marginal`
    is the exact log p(x); above it the discrete values come from a proposal (importance sampling from
    the encoder: ``sampled_discrete``) and ``log_marginal`` is None."""

    binary_data = True
    sampled_discrete = True  # beyond MAX_ENUMERATION, evaluations take z from the proposal

    def __init__(self, data_dim, latent_dim=20, hidden_dims=(400,), categories=10):
        super().__init__(data_dim, latent_dim, hidden_dims)
        if categories < 2:
            raise ValueError(f"categories must be at least 2, got {categories}")
        self.categories = categories
        self.decoder = mlp([latent_dim * categories, *reversed(hidden_dims), data_dim])

    @property
    def configurations(self):
        """K^M, the joint values of a point's latents."""
        return self.categories**self.latent_dim

    def site_names(self):
        return [f"z_{m}" for m in range(self.latent_dim)]

    def prior(self, x):
        """p(z_m) = OneHotCategorical(1/K), one per row of ``x`` (the same for every m)."""
        return dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], self.categories))

    def likelihood(self, z):
        """p(x | z) for z the M one-hot vectors side by side, (..., M K)."""
        return BernoulliLogits(logits=self.decode(z)).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), data_plate(x, idx, num_data):
            prior = self.prior(x)
            z = [pyro.sample(name, prior) for name in self.site_names()]
            pyro.sample("x", self.likelihood(concatenate(z)), obs=x)

    @torch.no_grad()
    def log_marginal(self, x):
        """The exact log p(x) = log sum_z p(z) p(x | z) over the K^M configurations, by the program's
        enumeration (``density.log_joint`` with no values), per row; None when K^M > MAX_ENUMERATION."""
        if self.configurations > MAX_ENUMERATION:
            return None
        rows = max(1, EXACT_CHUNK_ELEMENTS // (self.configurations * self.data_dim))
        return torch.cat([log_joint(self, chunk, {}) for chunk in x.split(rows)])

    def brute_force_log_marginal(self, x):
        """log p(x) by an explicit loop over the K^M configurations: the check on :meth:`log_marginal`."""
        total = torch.full((len(x),), -math.inf, device=x.device)
        eye = torch.eye(self.categories, device=x.device)
        log_prior = -self.latent_dim * math.log(self.categories)
        for index in range(self.configurations):
            digits = [(index // self.categories**m) % self.categories for m in range(self.latent_dim)]
            z = torch.cat([eye[k] for k in digits]).expand(len(x), -1)
            total = torch.logaddexp(total, log_prior + self.likelihood(z).log_prob(x))
        return total
