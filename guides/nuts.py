import hashlib

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.registry import register_guide

from .meanfield import fit_local_posterior


def row_keys(x):
    """A hash of each row of ``x``: how draws are matched to data points."""
    rows = x.detach().cpu().numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in rows]


def moment_matched(draws):
    """For each point, the Gaussian with the mean and covariance of its draws
    (all chains pooled); ``draws`` has shape (chains, samples, N, latent_dim)."""
    flat = draws.reshape(-1, *draws.shape[2:])  # (chains * samples, N, L)
    mean = flat.mean(0)
    centred = flat - mean
    eye = torch.eye(flat.shape[-1], device=flat.device)
    # a small ridge keeps the covariance positive definite with few draws
    covariance = torch.einsum("snk,snl->nkl", centred, centred) / (len(flat) - 1) + 1e-6 * eye
    return dist.MultivariateNormal(mean, covariance_matrix=covariance)


@register_guide("nuts")
class NutsPosterior(nn.Module):
    """The posterior of a NUTS run, summarised for evaluation: for each point
    of the run's subset, q(z_i) = N(mean_i, cov_i), the Gaussian
    moment-matched to that point's draws (all chains pooled). It is the
    importance-sampling proposal of ``evaluate`` on NUTS runs: a full
    covariance per point, so correlated posteriors are proposed as they are.

    Not an SVI guide: ``python -m pyro_vae.fit --guide nuts`` samples with
    NUTS (see ``pyro_vae.nuts``). Points outside the subset have no draws; for
    them :meth:`posterior` fits a per-point Gaussian with the decoder fixed
    (``fit_local_posterior``), as for a meanfield run.
    """

    amortized = False

    def __init__(self, model, num_data, hidden_dims=()):
        super().__init__()
        self.model = [model]  # a list hides it from nn.Module: not this object's parameters
        self.keys, self.loc, self.covariance = [], None, None

    def set_draws(self, x, draws):
        """Summarise ``draws`` of shape (chains, samples, len(x), latent_dim)."""
        q = moment_matched(draws)
        self.keys, self.loc, self.covariance = row_keys(x), q.mean, q.covariance_matrix

    def posterior(self, x, idx=None):
        index = {key: i for i, key in enumerate(self.keys)}
        rows = [index.get(key) for key in row_keys(x)]
        if any(r is None for r in rows):
            return fit_local_posterior(self.model[0], x)[0]
        rows = torch.tensor(rows, device=x.device)
        return dist.MultivariateNormal(self.loc[rows], covariance_matrix=self.covariance[rows])

    def forward(self, *args, **kwargs):
        raise RuntimeError("the nuts posterior is sampled by NUTS, not trained by SVI: see pyro_vae.nuts")

    def get_extra_state(self):
        return {"keys": list(self.keys), "loc": self.loc, "covariance": self.covariance}

    def set_extra_state(self, state):
        self.keys, self.loc, self.covariance = list(state["keys"]), state["loc"], state["covariance"]
