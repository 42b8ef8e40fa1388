"""The Euclidean metric of every chain, one dense L x L block per data point.

A chain's position z is an (N, L) array, its momentum r ~ N(0, M), with the
inverse mass matrix C = M^{-1} block diagonal: C_i (L, L) for point i.
H(z, r) = -log p(z) + sum_i r_i^T C_i r_i / 2; velocity dz_i/dt = C_i r_i.
Tensors carry a leading chain axis: z (chains, N, L), C (chains, N, L, L).
Given the decoder the posterior factorises over points, so its covariance
has exactly this block shape: the metric whitens each point's correlated
posterior, which a diagonal metric cannot, at the cost of N small blocks.
"""

from typing import NamedTuple

import torch

class Metric(NamedTuple):
    """The Euclidean metric of every chain: C = M^{-1}, one dense L x L block
    per point, and A^{-T} for C = A A^T, which turns standard normal noise
    into momenta r ~ N(0, M)."""

    inverse_mass: torch.Tensor  # (chains, N, L, L)
    momentum_factor: torch.Tensor  # (chains, N, L, L)


def dense_block_metric(inverse_mass):
    """The :class:`Metric` with inverse mass matrix blocks ``inverse_mass``."""
    factor = torch.linalg.cholesky(inverse_mass)
    eye = torch.eye(inverse_mass.shape[-1], device=inverse_mass.device, dtype=inverse_mass.dtype)
    return Metric(inverse_mass, torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False).mT)


def identity_metric(z):
    """M = I for chains shaped like ``z`` (chains, N, L)."""
    chains, n_points, dim = z.shape
    eye = torch.eye(dim, device=z.device, dtype=z.dtype).expand(chains, n_points, dim, dim).contiguous()
    return Metric(eye, eye)


def velocity(r, inverse_mass):
    return (inverse_mass @ r.unsqueeze(-1)).squeeze(-1)


def dot(a, b):
    """Inner product of two chain states, one number per chain."""
    return (a * b).sum((-2, -1))


def kinetic_energy(r, inverse_mass):
    return 0.5 * dot(r, velocity(r, inverse_mass))


def sample_momentum(metric, generator):
    """r ~ N(0, M): r = A^{-T} e has covariance A^{-T} A^{-1} = C^{-1} = M."""
    factor = metric.momentum_factor
    noise = torch.randn(factor.shape[:-1], generator=generator, device=factor.device, dtype=factor.dtype)
    return velocity(noise, factor)


def per_chain(value, like):
    """A (chains,) tensor shaped to broadcast against ``like``."""
    return value.view(-1, *[1] * (like.dim() - 1))


def select(mask, new, old):
    """Per chain, ``new`` where ``mask`` else ``old``, for tuples of tensors."""
    return tuple(torch.where(per_chain(mask, a), a, b) for a, b in zip(new, old))
