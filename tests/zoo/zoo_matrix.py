"""A matrix latent per point: z_i of event shape (2, L), decoded from its flattened values."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv


@pv.register_model("zoo_matrix")
class MatrixLatent(pv.LatentVariableModel):
    def __init__(self, data_dim, latent_dim=2, hidden_dims=(32,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = pv.mlp([2 * latent_dim, *reversed(hidden_dims), data_dim])

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), pv.data_plate(x, idx, num_data):
            prior = dist.Normal(x.new_zeros(x.shape[0], 2, self.latent_dim), 1.0).to_event(2)
            z = pyro.sample("z", prior)
            logits = self.decode(z.flatten(-2))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


@pv.register_guide("zoo_matrix_encoder")
class MatrixEncoder(nn.Module):
    amortized = True

    def __init__(self, model, num_data, hidden_dims=(32,)):
        super().__init__()
        self.latent_dim = model.latent_dim
        self.net = pv.mlp([model.data_dim, *hidden_dims, 4 * model.latent_dim])

    def posterior(self, x, **unused):
        loc, log_scale = self.net(x).reshape(-1, 2, 2, self.latent_dim).unbind(1)
        return dist.Normal(loc, log_scale.exp()).to_event(2)

    def forward(self, x, idx=None, num_data=None):
        pyro.module("zoo_matrix_encoder", self)
        with pv.data_plate(x, idx, num_data):
            pyro.sample("z", self.posterior(x))
