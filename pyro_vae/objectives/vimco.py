"""The importance-weighted bound for guides with discrete sites: VIMCO, ``--elbo vimco``.

The IWAE bound L = log (1/K) sum_k w_k (per data point, ``pyro_vae.objectives.particles``) cannot be differentiated
through a discrete z. Its gradient in the guide's parameters by the score function, with the
leave-one-out baselines of Mnih & Rezende (2016, "Variational inference for Monte Carlo objectives"):

    grad L = sum_k (L - L_{-k}) grad log q(z_k | x) + sum_k w~_k grad log w_k,

L_{-k} the bound with w_k replaced by the geometric mean of the other K - 1 weights, w~ the
self-normalised weights; the model's gradient is the IWAE one. Every draw is detached (no
reparameterised path), so it runs with any guide whose sites are per point, discrete or not. With
K = 1 the baseline is 0: the plain score-function ELBO.
"""

import math

import torch

from pyro_vae.objectives.particles import ParticleObjective
from pyro_vae.objectives.primitives import iwae_bound, log_density


def leave_one_out(log_w):
    """L_{-k} per particle and point, (K, B), from detached log weights (K, B) (zeros for K = 1)."""
    k = log_w.shape[0]
    if k == 1:
        return torch.zeros_like(log_w)
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # geometric mean of the other weights, in logs
    replaced = log_w.unsqueeze(0).repeat(k, 1, 1)  # (K replaced, K, B)
    index = torch.arange(k, device=log_w.device)
    replaced[index, index] = others
    return torch.logsumexp(replaced, dim=1) - math.log(k)


class VIMCO(ParticleObjective):
    """The IWAE bound with VIMCO's score-function gradient for the guide (module docstring)."""

    reparameterised = False

    def backward(self, model, guide, args, kwargs, model_trace, guide_trace, scale):
        log_p, log_q = log_density(model_trace), log_density(guide_trace)
        log_w = log_p - log_q
        bound = iwae_bound(log_w)
        detached = log_w.detach()
        learning_signal = iwae_bound(detached).unsqueeze(0) - leave_one_out(detached)
        surrogate = -scale * (bound.sum() + (learning_signal * log_q).sum())
        surrogate.backward()
        return (-scale * bound.sum()).detach()
