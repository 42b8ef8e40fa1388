import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.registry import register_guide


@register_guide("two_layer")
class TwoLayerGuide(nn.Module):
    """q(z1, z2 | x) = N(z1; mu1(x), diag sigma1(x)^2) N(z2; mu2(z1), diag sigma2(z1)^2): the bottom-up
    recognition model of Burda et al. (2015) for the ``two_layer`` model, amortized over x.

    It has no ``posterior`` method: every estimator scores this program itself
    (``posteriors.ProgramPosterior``), both sites, as the training bound does."""

    amortized = True

    def __init__(self, model, num_data, hidden_dims=(400,)):
        super().__init__()
        bottom = getattr(model, "bottom_dim", None)
        if bottom is None:
            raise ValueError(f"guide two_layer is the recognition model of the two_layer model, not of {model.name}")
        self.bottom_encoder = mlp([model.data_dim, *hidden_dims, 2 * bottom])
        self.top_encoder = mlp([bottom, *[max(1, h // 2) for h in hidden_dims], 2 * model.latent_dim])

    @staticmethod
    def gaussian(net, inputs):
        loc, log_scale = net(inputs).chunk(2, dim=-1)
        return dist.Normal(loc, torch.exp(log_scale)).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            z1 = pyro.sample("z1", self.gaussian(self.bottom_encoder, x))
            pyro.sample("z2", self.gaussian(self.top_encoder, z1))
