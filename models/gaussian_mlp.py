import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_vae.nn import mlp
from pyro_vae.plumbing.registry import register_model

from .base import LatentVariableModel


@register_model("gaussian_mlp")
class GaussianMLP(LatentVariableModel):
    """p(x | z) = N(x; mu(z), diag sigma(z)^2) with mu = sigmoid(f(z)) in [0, 1]
    and sigma = softplus(g(z)) + min_scale, f and g heads of one MLP: the
    continuous decoder of Kingma & Welling (2013) for Frey Face.

    The floor ``min_scale`` keeps the density bounded: without it a decoder can
    drive sigma to zero on pixels that never change and the ELBO diverges.
    """

    binary_data = False
    min_scale = 1e-2

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(200,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), 2 * data_dim])

    def likelihood(self, z):
        loc, scale = self.decode(z).chunk(2, dim=-1)
        return dist.Normal(torch.sigmoid(loc), F.softplus(scale) + self.min_scale).to_event(1)
