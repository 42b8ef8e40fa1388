"""The generative model p(z) p(x | z) that every inference method shares."""

import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae.building_blocks import data_plate


class LatentVariableModel(nn.Module):
    """p(z) = N(0, I) on R^latent_dim and a likelihood p(x | z) on R^data_dim.

    Subclasses implement :meth:`likelihood`. The decoder's weights are point
    estimates registered with ``pyro.module``; the model says nothing about
    how p(z | x) will be approximated (an encoder, per-point mean-field
    Gaussians or NUTS all run this same program).

    Constructor arguments are the same for every model, so the command line
    and checkpoints can rebuild any of them: ``data_dim``, ``latent_dim`` and
    ``hidden_dims`` (listed from the data side: the decoder runs them in
    reverse, an encoder in order; models without hidden layers ignore them).
    """

    name = None  # set by @register_model

    def __init__(self, data_dim, latent_dim, hidden_dims=()):
        super().__init__()
        if latent_dim < 1:
            raise ValueError("latent_dim must be at least 1")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden_dims = tuple(hidden_dims)

    def prior(self, x):
        """p(z) = N(0, I), one latent vector per row of ``x``."""
        zeros = x.new_zeros(x.shape[0], self.latent_dim)
        return dist.Normal(zeros, 1.0).to_event(1)

    def likelihood(self, z):
        """p(x | z): a distribution with event shape (data_dim,)."""
        raise NotImplementedError

    def forward(self, x, idx=None, num_data=None):
        """The Pyro model: z_i ~ p(z), x_i ~ p(x | z_i) for the rows ``idx``."""
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)

    def log_joint(self, x, z):
        """log p(x, z) per example; ``z`` may carry extra leading sample dims."""
        return self.likelihood(z).log_prob(x) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
