"""Brute-force answers for 2-D latents: log p(x) and the posterior's moments by quadrature on a grid
(for tests of AIS and NUTS on posteriors that are not Gaussian)."""

import math
from typing import NamedTuple

import torch

from pyro_vae.nn import frozen
from pyro_vae.program.density import log_joint


class GridPosterior(NamedTuple):
    """Per row of x: log p(x) (N,), E[z | x] (N, 2), Cov[z | x] (N, 2, 2), the third central moment of
    each coordinate (N, 2) and E[c_k^2 c_l^2], c = z - E[z | x] (N, 2, 2): the variance of an entry
    c_k c_l of the covariance is E[c_k^2 c_l^2] - Cov_kl^2."""

    log_marginal: torch.Tensor
    mean: torch.Tensor
    covariance: torch.Tensor
    third: torch.Tensor
    fourth: torch.Tensor


@torch.no_grad()
def posterior_on_grid(model, x, half_width=5.0, points=801, chunk=20000):
    """:class:`GridPosterior` of a model with a 2-D latent, by the midpoint rule on a ``points`` x
    ``points`` grid over [-half_width, half_width]^2 (float64 sums of the model's log p(x, z)). The
    prior N(0, I) puts mass 1e-5 outside [-5, 5]^2."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    cell = (axis[1] - axis[0]) ** 2
    z = torch.cartesian_prod(axis, axis)  # (G, 2)
    with frozen(model):
        parts = [log_joint(model, x, part.to(x.dtype).unsqueeze(1).expand(-1, len(x), -1)).double()
                 for part in z.split(chunk)]
    log_p = torch.cat(parts)  # (G, N)
    weights = torch.softmax(log_p, 0)  # (G, N)
    mean = weights.T @ z  # (N, 2)
    centred = z.unsqueeze(1) - mean  # (G, N, 2)
    covariance = torch.einsum("gn,gnk,gnl->nkl", weights, centred, centred)
    third = torch.einsum("gn,gnk->nk", weights, centred**3)
    fourth = torch.einsum("gn,gnk,gnl->nkl", weights, centred**2, centred**2)
    return GridPosterior(log_p.logsumexp(0) + math.log(cell), mean, covariance, third, fourth)
