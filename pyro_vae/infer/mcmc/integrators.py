"""The sampler's state and the leapfrog integrator."""

from typing import NamedTuple

import torch

from pyro_vae.infer.mcmc.metrics import kinetic_energy, per_chain, velocity


class HMCState(NamedTuple):
    """Where every chain is: position (chains, N, L), log density (chains,) and its gradient."""

    z: torch.Tensor
    log_p: torch.Tensor
    grad: torch.Tensor


def init(z, log_density):
    """The :class:`HMCState` of chains at ``z`` (chains, N, L): ``log_density(z)`` returns
    (log p(z) per chain, shape (chains,), and its gradient, shape of z). ValueError where
    log p(z) is not finite."""
    z = z.detach()
    log_p, grad = log_density(z)
    if not torch.isfinite(log_p).all():
        raise ValueError("the log density is not finite where the chains start")
    return HMCState(z, log_p, grad)


class Leapfrog(torch.nn.Module):
    """One leapfrog step of signed size ``step`` (chains,) for every chain;
    ``grad`` is the gradient of log p at ``z``. Returns (z, r, grad, log p,
    kinetic energy) after it."""

    def __init__(self, log_density):
        super().__init__()
        self.log_density = log_density

    def forward(self, z, r, grad, step, inverse_mass):
        step = per_chain(step, z)
        r = r + 0.5 * step * grad
        z = z + step * velocity(r, inverse_mass)
        log_p, grad = self.log_density(z)
        r = r + 0.5 * step * grad
        return z, r, grad, log_p, kinetic_energy(r, inverse_mass)
