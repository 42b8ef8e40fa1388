"""A discrete cluster beside a continuous code: y_i ~ Categorical(1/K), enumerated, and z_i ~ N(0, I),
x_i ~ Bernoulli(sigmoid(f(z_i) + c_{y_i})). Train it with ``--elbo enum``; the guide samples z only."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae as pv

CLUSTERS = 3


@pv.register_model("zoo_enum")
class ClusteredVAE(pv.LatentVariableModel):
    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(32,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = pv.mlp([latent_dim, *reversed(hidden_dims), data_dim])
        self.cluster_logits = nn.Parameter(torch.zeros(CLUSTERS, data_dim))

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), pv.data_plate(x, idx, num_data):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(x.shape[0], CLUSTERS)),
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z) + self.cluster_logits[y]).to_event(1), obs=x)
