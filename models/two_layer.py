import pyro
import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_vae.nn import BernoulliLogits, data_plate, mlp
from pyro_vae.plumbing.registry import register_model

from .base import LatentVariableModel


@register_model("two_layer")
class TwoLayerBernoulli(LatentVariableModel):
    """Two stochastic layers (Burda, Grosse & Salakhutdinov 2015, their second architecture):

        z2 ~ N(0, I_L),   z1 | z2 ~ N(mu(z2), diag sigma(z2)^2) on R^{2L},   x | z1 ~ Bernoulli(f(z1)),

    with L = ``latent_dim`` (Burda et al.: 50 and 100), f the decoder with ``hidden_dims`` (theirs:
    200-200) and mu, sigma one network with half those widths (theirs: 100-100). Two latent sites,
    ``"z2"`` and ``"z1"``, both in the data plate: every method reads them off this program.
    """

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(400,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.bottom_dim = 2 * latent_dim
        self.prior_net = mlp([latent_dim, *[max(1, h // 2) for h in reversed(hidden_dims)], 2 * self.bottom_dim])
        self.decoder = mlp([self.bottom_dim, *reversed(hidden_dims), data_dim])

    def bottom_prior(self, z2):
        """p(z1 | z2) = N(mu(z2), diag sigma(z2)^2), sigma = softplus + 1e-3 (bounded away from 0)."""
        loc, scale = self.prior_net(z2).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(scale) + 1e-3).to_event(1)

    def likelihood(self, z1):
        return BernoulliLogits(logits=self.decode(z1)).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), data_plate(x, idx, num_data):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros_like(x[..., :1]).expand(x.shape[0], self.latent_dim),
                                               1.0).to_event(1))
            z1 = pyro.sample("z1", self.bottom_prior(z2))
            pyro.sample("x", self.likelihood(z1), obs=x)
