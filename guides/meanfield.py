import hashlib
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn

from pyro_vae.building_blocks import data_plate, frozen
from pyro_vae.registry import register_guide


@register_guide("meanfield")
class MeanFieldGuide(nn.Module):
    """q(z_1, ..., z_N) = prod_i N(z_i; m_i, diag s_i^2): one factorised
    Gaussian per training point and no encoder (classical mean-field
    variational Bayes). With the model's decoder weights as point estimates,
    SVI on this guide is variational EM.

    The local parameters m, log s are two ``nn.Embedding(N, latent_dim,
    sparse=True)`` tables indexed by the data plate's subsample indices, so a
    minibatch touches (and Adam updates, lazily, via ``SparseAdam``) only its
    own rows: a step costs the same for N = 60,000 as for N = 600.

    For points outside the training set there are no local parameters;
    :meth:`posterior` without ``idx`` fits fresh ones with the decoder fixed
    (:func:`fit_local_posterior`).
    """

    amortized = False
    init_scale = 0.1

    def __init__(self, model, num_data, hidden_dims=()):
        super().__init__()
        self.model = [model]  # a list hides it from nn.Module: not this guide's parameters
        self.num_data = num_data
        self.loc = nn.Embedding(num_data, model.latent_dim, sparse=True)
        self.log_scale = nn.Embedding(num_data, model.latent_dim, sparse=True)
        nn.init.normal_(self.loc.weight, std=0.01)
        nn.init.constant_(self.log_scale.weight, math.log(self.init_scale))
        self.last_fit_steps = None  # Adam steps of the last test-time fit
        self._warm_starts = {}

    def local_posterior(self, idx):
        """q(z_i) for the training points ``idx``."""
        return dist.Normal(self.loc(idx), self.log_scale(idx).exp()).to_event(1)

    def posterior(self, x, idx=None):
        """q(z | x): the learned factors for training rows ``idx``; for new
        ``x`` (no ``idx``), the optimum of :func:`fit_local_posterior`.

        Asked again about the same rows (the test set each epoch), the fit
        starts from the previous answer, so tracking a slowly changing decoder
        costs a few windows of steps, not a full fit. These warm starts are
        part of the guide's state dict, so a resumed run repeats them exactly.
        """
        if idx is not None:
            return self.local_posterior(idx)
        key = hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()
        init = self._warm_starts.get(key)
        init = None if init is None else dist.Normal(init["loc"], init["scale"]).to_event(1)
        q, self.last_fit_steps = fit_local_posterior(self.model[0], x, init=init)
        self._warm_starts[key] = {"loc": q.mean, "scale": q.stddev}
        return q

    def get_extra_state(self):
        return {"warm_starts": self._warm_starts}

    def set_extra_state(self, state):
        self._warm_starts = dict(state["warm_starts"])

    def forward(self, x, idx=None, num_data=None):
        if (num_data or len(x)) != self.num_data:
            raise ValueError(f"meanfield guide has local parameters for {self.num_data} training points, "
                             f"not for a dataset of {num_data or len(x)}; use posterior(x) for new data")
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data) as subsample:
            pyro.sample("z", self.local_posterior(subsample))


def fit_local_posterior(model, x, num_particles=8, lr=0.05, max_steps=3000, window=50, tol=1e-3, init=None):
    """Fit q(z_i) = N(m_i, diag s_i^2) to each row x_i of ``x`` with the
    model (decoder) fixed: test-time inference without an encoder.

    Maximises sum_i ELBO_i = E_q[log p(x_i, z_i) - log q(z_i)] with Adam on
    (m, log s), the expectation estimated with ``num_particles``
    reparameterised draws per point and step, all points in one batch (the
    objective is a sum of independent terms and Adam is elementwise, so this
    is per-point optimisation). Stopping rule: every ``window`` steps, the
    mean ELBO per point over the last window is compared with the window
    before; stop when it improved by less than ``tol`` nats, or after
    ``max_steps``. The answer is the average of (m, log s) over the last
    window (Polyak averaging): with a constant step size the last iterate
    jitters around the optimum by about ``lr``, the average much less.
    Starts from ``init`` (a Normal, e.g. an encoder's q) or from m = 0, s = 0.1.

    Returns (q, steps): q a ``Normal(m, s).to_event(1)`` with batch shape
    (len(x),), detached; steps the number of Adam steps taken.
    """
    from pyro_vae.evaluate import log_joint_terms

    latent_dim = model.latent_dim
    if init is not None:
        loc = init.mean.detach().clone()
        log_scale = init.variance.detach().sqrt().log().clone()
    else:
        loc = torch.zeros(len(x), latent_dim, device=x.device)
        log_scale = torch.full((len(x), latent_dim), math.log(MeanFieldGuide.init_scale), device=x.device)
    loc.requires_grad_(True)
    log_scale.requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    history, previous, steps = [], None, 0
    loc_sum, log_scale_sum = torch.zeros_like(loc), torch.zeros_like(log_scale)
    # the decoder is fixed; callers may be under no_grad (evaluation) or inside a
    # Pyro trace (a guide program)
    with frozen(model), torch.enable_grad(), poutine.block():
        while steps < max_steps:
            q = dist.Normal(loc, log_scale.exp()).to_event(1)
            z = q.rsample((num_particles,))
            log_lik, log_prior = log_joint_terms(model, x, z)
            elbo = (log_lik + log_prior - q.log_prob(z)).mean(0)  # per point
            optimizer.zero_grad()
            (-elbo.sum()).backward()
            optimizer.step()
            steps += 1
            history.append(elbo.mean().item())
            loc_sum += loc.detach()
            log_scale_sum += log_scale.detach()
            if len(history) == window:
                current = sum(history) / window
                if previous is not None and current - previous < tol:
                    break
                previous, history = current, []
                loc_sum, log_scale_sum = torch.zeros_like(loc), torch.zeros_like(log_scale)
    n = len(history)
    if n == 0:  # stopped right after a window was reset: the current iterate
        return dist.Normal(loc.detach(), log_scale.detach().exp()).to_event(1), steps
    return dist.Normal(loc_sum / n, (log_scale_sum / n).exp()).to_event(1), steps
