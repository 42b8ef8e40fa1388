"""The posterior of an MCMC run, summarised for evaluation and comparison."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.program.density import layout_of
from pyro_vae.infer.local_fit import fit_local_posterior
from pyro_vae.program.posteriors import as_posterior


def moment_matched(draws):
    """For each point, the Gaussian with the mean and covariance of its draws
    (all chains pooled); ``draws`` has shape (chains, samples, N, dim)."""
    flat = draws.reshape(-1, *draws.shape[2:])  # (chains * samples, N, L)
    mean = flat.mean(0)
    centred = flat - mean
    eye = torch.eye(flat.shape[-1], device=flat.device, dtype=flat.dtype)
    # a small ridge keeps the covariance positive definite with few draws
    covariance = torch.einsum("snk,snl->nkl", centred, centred) / (len(flat) - 1) + 1e-6 * eye
    return dist.MultivariateNormal(mean, covariance_matrix=covariance)


class MomentMatchedPosterior(nn.Module):
    """q(z_i) = N(mean_i, cov_i), the Gaussian moment-matched to the NUTS
    draws of point i (all chains pooled), for the points an MCMC run sampled:
    the importance-sampling proposal of ``evaluate`` on such a run, with a
    full covariance per point, so correlated posteriors are proposed as they are.

    Points are named by their index ``idx`` among the sampled ones (the first
    ``--subset`` rows of ``split``); a point without draws gets a Gaussian
    fitted with the decoder fixed (``fit_local_posterior``), as a meanfield
    run's new points do.
    """

    amortized = False

    def __init__(self, model):
        super().__init__()
        self.model = [model]  # a list hides it from nn.Module: not this object's parameters
        self.split, self.loc, self.covariance = None, None, None

    def set_draws(self, draws, split):
        """Summarise ``draws`` of u (chains, samples, N, dim) of the first N rows of ``split``."""
        q = moment_matched(draws)
        self.split, self.loc, self.covariance = split, q.mean, q.covariance_matrix

    @property
    def num_points(self):
        return 0 if self.loc is None else len(self.loc)

    def posterior(self, x, idx=None, key=None, fixed=None):
        """q(z | x) for the sampled points ``idx``, or fitted afresh for new ``x``: a Gaussian in the
        flat unconstrained latents u, seen through the model's layout (``posteriors.as_posterior``)."""
        layout = layout_of(self.model[0], x, fixed)
        if idx is None:
            return as_posterior(fit_local_posterior(self.model[0], x, fixed=fixed)[0], layout)
        idx = torch.as_tensor(idx, device=self.loc.device)
        return as_posterior(dist.MultivariateNormal(self.loc[idx], covariance_matrix=self.covariance[idx]), layout)

    def get_extra_state(self):
        return {"split": self.split, "loc": self.loc, "covariance": self.covariance}

    def set_extra_state(self, state):
        self.split, self.loc, self.covariance = state["split"], state["loc"], state["covariance"]
