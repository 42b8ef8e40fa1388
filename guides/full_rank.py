import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.nn import data_plate, mlp
from pyro_vae.plumbing.registry import register_guide


def scale_tril(diagonal, strict, dim):
    """The lower-triangular L with ``softplus(diagonal)`` on its diagonal (positive) and the
    d(d-1)/2 entries ``strict`` below it, row by row; batched over the leading dimensions."""
    rows, cols = torch.tril_indices(dim, dim, offset=-1, device=diagonal.device)
    L = diagonal.new_zeros(*diagonal.shape, dim)
    L[..., rows, cols] = strict
    return L + torch.diag_embed(F.softplus(diagonal) + 1e-5)


@register_guide("full_rank")
class FullRankGuide(nn.Module):
    """q(z | x) = N(z; mu(x), L(x) L(x)^T): a full-covariance Gaussian, mu, the diagonal of L
    (through softplus) and its d(d-1)/2 entries below the diagonal from one MLP encoder (amortized).
    Its per-point optimum q* (``pyro_vae.infer.local_families``) is the same family per point."""

    amortized = True
    family = "full_rank"

    def __init__(self, model, num_data, hidden_dims=(400,)):
        super().__init__()
        d = self.latent_dim = model.latent_dim
        self.encoder = mlp([model.data_dim, *hidden_dims, 2 * d + d * (d - 1) // 2])
        with torch.no_grad():  # start near the diagonal family: small off-diagonal entries
            self.encoder[-1].weight[2 * d:].mul_(0.1)
            self.encoder[-1].bias[2 * d:].zero_()

    def posterior(self, x, idx=None, **unused):
        """q(z | x) as a batch of ``MultivariateNormal(mu(x), scale_tril=L(x))``, one per row of ``x``."""
        out = self.encoder(x)
        d = self.latent_dim
        loc, diagonal, strict = out[..., :d], out[..., d:2 * d], out[..., 2 * d:]
        return dist.MultivariateNormal(loc, scale_tril=scale_tril(diagonal, strict, d))

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            pyro.sample("z", self.posterior(x))
