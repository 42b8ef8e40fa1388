"""Test-time inference without an encoder: a q per point, fitted with the model's weights fixed
(classical variational inference on new data).

:func:`fit_local` is the one per-point fitter, whatever the family (a factorised Gaussian here; the
richer families of ``pyro_vae.infer.local_families``), with one stopping rule; :func:`refine` takes a
fixed number of the same steps (semi-amortized inference, the meanfield guide's local steps);
:func:`fit_local_posterior` is the factorised Gaussian's fit. ``WarmStarts`` is a small bounded cache
of its answers, keyed by a handle the caller chooses ("test", say), so that asking again about the
same points under a slowly changing decoder starts from the last answer.
"""

import math
from collections import OrderedDict
from contextlib import contextmanager

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_vae.nn import frozen
from pyro_vae.program.density import layout_of, unconstrained_terms

INIT_SCALE = 0.1


@contextmanager
def fixed_model(model):
    """Optimise local parameters against ``model`` with its weights fixed:
    callers may be under no_grad (evaluation) or inside a Pyro trace (a guide
    program, whose trace must not see the model's sites)."""
    with frozen(model), torch.enable_grad(), poutine.block():
        yield


def log_weights_u(model, q, x, u, fixed=None):
    """log p(x, z(u)) + log |det dz/du| - log q(u): the log weights of a q over the flat unconstrained
    latents u (``density.Layout``; u is z for the built-in models)."""
    log_lik, log_prior = unconstrained_terms(model, x, u, fixed)
    return log_lik + log_prior - q.log_prob(u)


def factorised(params):
    """q(u_i) = N(m_i, diag s_i^2) from the leaves (m, log s)."""
    loc, log_scale = params
    return dist.Normal(loc, log_scale.exp()).to_event(1)


def ascend(model, x, params, make_q, optimizer, num_particles=1, fixed=None):
    """One optimiser step on ``params`` up sum_i ELBO_i of q = ``make_q(params)``, ELBO_i =
    E_q[log p(x_i, z_i) - log q(z_i)] estimated with ``num_particles`` reparameterised draws;
    returns the per-point estimate (detached)."""
    q = make_q(params)
    elbo = log_weights_u(model, q, x, q.rsample((num_particles,)), fixed).mean(0)
    optimizer.zero_grad()
    (-elbo.sum()).backward()
    optimizer.step()
    return elbo.detach()


def refine(model, x, loc, log_scale, steps, lr, num_particles=1, fixed=None):
    """``steps`` Adam steps on q(z_i) = N(m_i, diag s_i^2), from (``loc``,
    ``log_scale``), up each point's ELBO with the model fixed: the local
    optimisation of stochastic VB (Hoffman et al. 2013) and of semi-amortized
    inference (Kim et al. 2018). Returns the refined (m, log s), detached: no
    gradient flows back through the refinement."""
    params = [loc.detach().clone().requires_grad_(True), log_scale.detach().clone().requires_grad_(True)]
    optimizer = torch.optim.Adam(params, lr=lr)
    with fixed_model(model):
        for _ in range(steps):
            ascend(model, x, params, factorised, optimizer, num_particles, fixed)
    return params[0].detach(), params[1].detach()


def fit_local(model, x, params, make_q, *, num_particles=8, lr=0.05, max_steps=3000, window=50, tol=1e-3,
              patience=1, groups=None, fixed=None):
    """Fit q = ``make_q(params)``, a q over the flat unconstrained latents u with batch (len(x),),
    to each row x_i of ``x`` with the model fixed; ``params`` are leaf tensors, updated in place.

    Maximises sum_i ELBO_i = E_q[log p(x_i, z_i) - log q(z_i)] with Adam (``groups``: Adam's
    parameter groups over ``params``, for rates of their own), the expectation estimated with
    ``num_particles`` reparameterised draws per point and step, all points in one batch (the
    objective is a sum of independent terms and Adam is elementwise, so this is per-point
    optimisation). Stopping rule: every ``window`` steps, the mean ELBO per point over the window
    is compared with the best window so far; ``patience`` windows in a row that do not beat it by
    ``tol`` nats stop the fit, as does ``max_steps``. With ``patience=1`` that is: stop at the first
    window that gains less than ``tol`` on the one before. The answer, written into ``params``, is
    their average over the windows since the last gain (Polyak averaging): with a constant step size
    the last iterate jitters around the optimum by about ``lr``, the average much less. Returns the
    number of Adam steps taken.
    """
    optimizer = torch.optim.Adam(groups or params, lr=lr)
    history, best, strikes, steps, averaged = [], -float("inf"), 0, 0, 0
    sums = [torch.zeros_like(p) for p in params]
    with fixed_model(model):
        while steps < max_steps and strikes < patience:
            elbo = ascend(model, x, params, make_q, optimizer, num_particles, fixed)
            steps += 1
            history.append(elbo.mean().item())
            averaged += 1
            for total, p in zip(sums, params):
                total += p.detach()
            if len(history) == window:
                current, history = sum(history) / window, []
                if current - best < tol:
                    strikes += 1
                else:  # a gain: the average restarts from here
                    best, strikes, averaged = current, 0, 0
                    sums = [torch.zeros_like(p) for p in params]
    if averaged:  # else it stopped right after a gain: the current iterate
        with torch.no_grad():
            for total, p in zip(sums, params):
                p.copy_(total / averaged)
    return steps


def fit_local_posterior(model, x, num_particles=8, lr=0.05, max_steps=3000, window=50, tol=1e-3, init=None,
                        fixed=None):
    """q(u_i) = N(m_i, diag s_i^2) fitted to each row x_i of ``x`` by :func:`fit_local` (its
    settings passed on), u the flat unconstrained latents (z for the built-in models;
    ``posteriors.as_posterior`` turns q into one over the model's sites). Starts from ``init`` (a
    Normal, e.g. an encoder's q) or from m = 0, s = 0.1.

    Returns (q, steps): q a ``Normal(m, s).to_event(1)`` with batch shape (len(x),), detached;
    steps the number of Adam steps taken.
    """
    if init is not None:
        loc = init.mean.detach().clone()
        log_scale = init.variance.detach().sqrt().log().clone()
    else:
        dim = layout_of(model, x, fixed).dim
        loc = torch.zeros(len(x), dim, device=x.device)
        log_scale = torch.full((len(x), dim), math.log(INIT_SCALE), device=x.device)
    params = [loc.requires_grad_(True), log_scale.requires_grad_(True)]
    steps = fit_local(model, x, params, factorised, num_particles=num_particles, lr=lr, max_steps=max_steps,
                      window=window, tol=tol, fixed=fixed)
    return factorised([p.detach() for p in params]), steps


class WarmStarts:
    """At most ``size`` past answers of :func:`fit_local_posterior`, keyed by
    a caller's handle, least recently used first out. Its ``state`` is
    tensors and strings only, so a guide can keep it in its state dict (a
    resumed run then repeats its warm starts exactly)."""

    def __init__(self, size=4):
        self.size = size
        self.entries = OrderedDict()

    def get(self, key, rows):
        """The stored answer for ``key`` if it was for ``rows`` points, else None."""
        entry = self.entries.get(key)
        if entry is None or len(entry["loc"]) != rows:
            return None
        self.entries.move_to_end(key)
        return dist.Normal(entry["loc"], entry["scale"]).to_event(1)

    def put(self, key, q):
        self.entries[key] = {"loc": q.mean, "scale": q.stddev}
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def state(self):
        return {"keys": list(self.entries), "values": list(self.entries.values())}

    def load(self, state):
        self.entries = OrderedDict(zip(state["keys"], state["values"]))
