import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.registry import register_guide


@register_guide("amortized")
class AmortizedGuide(nn.Module):
    """q(z | x) = N(z; mu(x), diag sigma(x)^2), mu and log sigma from one MLP
    encoder shared by every data point (amortized variational inference,
    Kingma & Welling 2013). Works on any x, seen in training or not.
    """

    amortized = True

    def __init__(self, model, num_data, hidden_dims=(400,)):
        super().__init__()
        self.latent_dim = model.latent_dim
        self.encoder = mlp([model.data_dim, *hidden_dims, 2 * model.latent_dim])

    def posterior(self, x, idx=None, **unused):
        """q(z | x) as a batch of diagonal Gaussians, one per row of ``x``
        (the encoder needs no training index, warm start or global values)."""
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)
        return dist.Normal(loc, torch.exp(log_scale)).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            pyro.sample("z", self.posterior(x))
