"""Masked observations, two ways a user hides data from the likelihood.

``zoo_masked_rows``: images with fewer than ``MIN_INK`` lit pixels count as corrupt and are left out of the
likelihood with ``poutine.mask``. ``zoo_masked_pixels``: the bottom rows of every image are hidden from the
decoder's likelihood by the distribution's own ``.mask``.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

import pyro_vae as pv

MIN_INK = 20


@pv.register_model("zoo_masked_rows")
class MaskedRows(pv.LatentVariableModel):
    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(32,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = pv.mlp([latent_dim, *reversed(hidden_dims), data_dim])

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), pv.data_plate(x, idx, num_data):
            z = pyro.sample("z", self.prior(x))
            with poutine.mask(mask=x.sum(-1) >= MIN_INK):
                pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)


@pv.register_model("zoo_masked_pixels")
class MaskedPixels(pv.LatentVariableModel):
    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(32,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = pv.mlp([latent_dim, *reversed(hidden_dims), data_dim])
        self.register_buffer("visible", torch.arange(data_dim) < data_dim * 3 // 4)

    def forward(self, x, idx=None, num_data=None):
        with self.weights(), pv.data_plate(x, idx, num_data):
            z = pyro.sample("z", self.prior(x))
            likelihood = dist.Bernoulli(logits=self.decode(z)).mask(self.visible).to_event(1)
            pyro.sample("x", likelihood, obs=x)
