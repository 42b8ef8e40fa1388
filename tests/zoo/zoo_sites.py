"""Probabilistic PCA split across two latent sites of different shapes, so p(x) has a closed form.

z1_i ~ N(0, 1) (event ()), z2_i ~ N(0, I_1) (event (1,)), x_i ~ N(b + W1 z1_i + W2 z2_i, s^2 I), hence
p(x) = N(b, W W^T + s^2 I) with W = [W1 W2]. Two guides: ``zoo_sites_program`` has no ``posterior`` (every
estimator scores its program); ``zoo_sites_partial`` has a ``posterior`` that covers z2 only, the shortcut a
user copies from the one-site guides.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv


@pv.register_model("zoo_sites")
class SplitPPCA(pv.LatentVariableModel):
    def __init__(self, data_dim, latent_dim=2, hidden_dims=()):
        super().__init__(data_dim, 2, hidden_dims)
        self.w = nn.Parameter(0.1 * torch.randn(data_dim, 2))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.log_s = nn.Parameter(torch.zeros(()))

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), pv.data_plate(x, idx, num_data):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x[..., 0]), 1.0))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            loc = self.b + z1.unsqueeze(-1) * self.w[:, 0] + z2 * self.w[:, 1]
            pyro.sample("x", dist.Normal(loc, self.log_s.exp()).to_event(1), obs=x)

    def log_marginal(self, x):
        covariance = self.w @ self.w.T + self.log_s.exp() ** 2 * torch.eye(self.data_dim)
        return dist.MultivariateNormal(self.b, covariance).log_prob(x)


class _TwoSiteEncoder(nn.Module):
    amortized = True

    def __init__(self, model, num_data, hidden_dims=(16,)):
        super().__init__()
        self.net = pv.mlp([model.data_dim, *hidden_dims, 4])

    def q_z2(self, x):
        loc, log_scale = self.net(x)[..., 2:].unbind(-1)
        return dist.Normal(loc.unsqueeze(-1), log_scale.exp().unsqueeze(-1)).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        loc, log_scale = self.net(x)[..., :2].unbind(-1)
        with pv.data_plate(x, idx, num_data):
            pyro.sample("z1", dist.Normal(loc, log_scale.exp()))
            pyro.sample("z2", self.q_z2(x))


@pv.register_guide("zoo_sites_program")
class ProgramOnly(_TwoSiteEncoder):
    pass


@pv.register_guide("zoo_sites_partial")
class PartialPosterior(_TwoSiteEncoder):
    def posterior(self, x, **unused):
        return self.q_z2(x)
