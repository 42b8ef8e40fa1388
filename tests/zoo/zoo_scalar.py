"""One-factor analysis: a scalar latent per point and a Gaussian likelihood on continuous data.

z_i ~ N(0, 1) (event shape ()), x_i | z_i ~ N(b + w z_i, s^2 I), so p(x) = N(b, w w^T + s^2 I) in closed form.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv


@pv.register_model("zoo_scalar")
class OneFactor(pv.LatentVariableModel):
    def __init__(self, data_dim, latent_dim=1, hidden_dims=()):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.w = nn.Parameter(0.1 * torch.ones(data_dim))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.log_s = nn.Parameter(torch.zeros(()))

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), pv.data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x[..., 0]), 1.0))
            pyro.sample("x", dist.Normal(self.b + z.unsqueeze(-1) * self.w, self.log_s.exp()).to_event(1), obs=x)

    def log_marginal(self, x):
        covariance = torch.outer(self.w, self.w) + self.log_s.exp() ** 2 * torch.eye(self.data_dim)
        return dist.MultivariateNormal(self.b, covariance).log_prob(x)


@pv.register_guide("zoo_scalar_encoder")
class ScalarEncoder(nn.Module):
    amortized = True

    def __init__(self, model, num_data, hidden_dims=(16,)):
        super().__init__()
        self.net = pv.mlp([model.data_dim, *hidden_dims, 2])

    def posterior(self, x, **unused):
        loc, log_scale = self.net(x).unbind(-1)
        return dist.Normal(loc, log_scale.exp())

    def forward(self, x, idx=None, num_data=None):
        pyro.module("zoo_scalar_encoder", self)
        with pv.data_plate(x, idx, num_data):
            pyro.sample("z", self.posterior(x))
