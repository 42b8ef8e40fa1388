from pyro_vae.nn import BernoulliLogits, mlp
from pyro_vae.plumbing.registry import register_model

from .base import LatentVariableModel


@register_model("bernoulli_mlp")
class BernoulliMLP(LatentVariableModel):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d)), f an MLP with softplus
    hidden layers: the binary-image decoder of Kingma & Welling (2013)."""

    binary_data = True

    def __init__(self, data_dim, latent_dim=2, hidden_dims=(400,)):
        super().__init__(data_dim, latent_dim, hidden_dims)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), data_dim])

    def likelihood(self, z):
        return BernoulliLogits(logits=self.decode(z)).to_event(1)
