"""A model that is not a ``LatentVariableModel``: a plain ``nn.Module`` that opens the data plate itself
(``pyro.plate("data", ...)`` through ``pv.data_plate``), and one with a global latent outside the plate.

``zoo_plain``: z_i ~ N(0, I), x_i ~ Bernoulli(f(z_i)), written from scratch.
``zoo_global``: the same with a global scale tau ~ LogNormal(0, 1) outside the data plate multiplying the
logits: a latent the per-point methods cannot own (it is refused in one line, or inferred as the
Bayesian decoder's weights are).
"""

import pyro
import pyro.distributions as dist
from torch import nn

import pyro_vae as pv


@pv.register_model("zoo_plain")
class PlainModule(nn.Module):
    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(32,)):
        super().__init__()
        self.data_dim, self.latent_dim, self.hidden_dims = data_dim, latent_dim, tuple(hidden_dims)
        self.decoder = pv.mlp([latent_dim, *reversed(hidden_dims), data_dim])

    def forward(self, x, idx=None, num_data=None):
        pyro.module("zoo_plain", self)
        with pv.data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


@pv.register_model("zoo_global")
class GlobalScale(PlainModule):
    def forward(self, x, idx=None, num_data=None):
        pyro.module("zoo_global", self)
        tau = pyro.sample("tau", dist.LogNormal(x.new_zeros(()), 1.0))
        with pv.data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=tau * self.decoder(z)).to_event(1), obs=x)
