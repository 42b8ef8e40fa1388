"""Constrained per-point latents: a positive noise scale, a weight in the unit interval and a point on the
simplex, beside a Gaussian z, with a Gaussian likelihood on continuous data.

s_i ~ LogNormal(0, 0.5), u_i ~ Beta(2, 2), w_i ~ Dirichlet(1, 1, 1), z_i ~ N(0, I),
x_i ~ N(u_i f(z_i) + w_i B, s_i^2 I). The guide has no ``posterior``: every estimator scores its program.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

import pyro_vae as pv


@pv.register_model("zoo_constrained")
class ConstrainedSites(pv.LatentVariableModel):
    def __init__(self, data_dim, latent_dim=2, hidden_dims=(16,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = pv.mlp([latent_dim, *reversed(hidden_dims), data_dim])
        self.basis = nn.Parameter(0.1 * torch.randn(3, data_dim))

    def forward(self, x, idx=None, num_data=None):
        n = x.shape[0]
        with self.weights(), pv.data_plate(x, idx, num_data):
            s = pyro.sample("s", dist.LogNormal(x.new_zeros(n), 0.5))
            u = pyro.sample("u", dist.Beta(x.new_full((n,), 2.0), 2.0))
            w = pyro.sample("w", dist.Dirichlet(x.new_ones(n, 3)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(n, self.latent_dim), 1.0).to_event(1))
            loc = u.unsqueeze(-1) * self.decode(z) + w @ self.basis
            pyro.sample("x", dist.Normal(loc, s.unsqueeze(-1)).to_event(1), obs=x)


@pv.register_guide("zoo_constrained_encoder")
class ConstrainedEncoder(nn.Module):
    amortized = True

    def __init__(self, model, num_data, hidden_dims=(16,)):
        super().__init__()
        self.latent_dim = model.latent_dim
        self.net = pv.mlp([model.data_dim, *hidden_dims, 2 * model.latent_dim + 7])

    def forward(self, x, idx=None, num_data=None):
        pyro.module("zoo_constrained_encoder", self)
        h = self.net(x)
        z_loc, z_log_scale, rest = h.split([self.latent_dim, self.latent_dim, 7], -1)
        with pv.data_plate(x, idx, num_data):
            pyro.sample("s", dist.LogNormal(rest[..., 0], F.softplus(rest[..., 1]) + 1e-3))
            pyro.sample("u", dist.Beta(F.softplus(rest[..., 2]) + 0.5, F.softplus(rest[..., 3]) + 0.5))
            pyro.sample("w", dist.Dirichlet(F.softplus(rest[..., 4:7]) + 0.5))
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))
