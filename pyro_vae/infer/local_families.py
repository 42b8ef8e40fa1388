"""The per-point optimum q* of each variational family, with the model's weights fixed: the test-time
local fits behind Cremer, Li & Duvenaud's (2018) gap decomposition, one per family.

- ``ffg``: a factorised Gaussian per point (:func:`pyro_vae.infer.local_fit.fit_local_posterior`);
- ``full_rank``: N(m_i, L_i L_i^T) per point, m (N, d) and the lower-triangular L (N, d, d) free;
- ``flow``: per point, a factorised Gaussian pushed through ``layers`` autoregressive transforms of
  the guide's kind (Pyro's ``AffineAutoregressive`` or ``SplineAutoregressive``) whose networks have
  their own weights for each point (``pyro_vae.nn.flows.PointwiseARN``: all N flows in one batched
  tensor program, so no point's parameters touch another's).

Every family is fitted as ``fit_local_posterior`` fits the factorised one: Adam on the sum of the
points' ELBOs (independent terms, elementwise Adam: per-point optimisation in one batch), ``particles``
reparameterised draws per point and step, stopped after ``patience`` windows without a gain of
``tol`` on the best window's mean ELBO, the answer the Polyak average of the parameters over the
windows since the last gain (per family: ``FAMILY_OPTIONS``). A fit starts from ``init``: in the
gap decomposition (``pyro_vae.studies.family_gaps``) the family's own encoder q(z | x), so that q* is the
local optimum the encoder was aiming at.
"""

import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_vae.program.density import layout_of
from pyro_vae.nn.flows import FLOW_LAYERS, Flow, pointwise_flow
from pyro_vae.infer.local_fit import fit_local_posterior, fixed_model, log_weights_u

FAMILIES = ("ffg", "full_rank", "flow")
GUIDE_OF = {"ffg": "amortized", "full_rank": "full_rank", "flow": "flow"}  # the amortized guide of each family
# Adam's rate and the stopping rule per family. full_rank: on MNIST (latent 50, 20 points) the rate 0.05, 8
# draws and 3 windows of patience stopped after 300 steps 1.5 nats below these settings (400 steps)
FAMILY_OPTIONS = {"full_rank": {"lr": 0.02, "particles": 16, "patience": 6, "tol": 1e-4}, "flow": {"lr": 0.01}}
FLOW_NETWORK_LR = 0.1  # the per-point flows' networks: this times the family's rate


def family_of(guide):
    """The family of a guide: its ``family`` attribute, ``ffg`` for the factorised Gaussian ones."""
    return getattr(guide, "family", "ffg")


def polyak_fit(model, x, params, make_q, *, particles=8, lr=0.05, max_steps=3000, window=50, tol=1e-3,
               patience=3, groups=None, fixed=None):
    """Adam on ``params`` up sum_i ELBO_i of ``make_q(params)`` (a q over the flat latents u) with
    the model fixed. Every ``window`` steps the window's mean ELBO per point is compared with the
    best so far: ``patience`` windows in a row that do not beat it by ``tol`` stop the fit (one
    noisy window does not), as does ``max_steps``. The answer, written into ``params``, is the
    Polyak average of the parameters over the windows since the last improvement; ``groups`` (Adam's
    parameter groups over ``params``) set rates of their own. Returns the steps."""
    optimizer = torch.optim.Adam(groups or params, lr=lr)
    history, best, strikes, steps, averaged = [], -float("inf"), 0, 0, 0
    sums = [torch.zeros_like(p) for p in params]
    with fixed_model(model):
        while steps < max_steps and strikes < patience:
            q = make_q(params)
            elbo = log_weights_u(model, q, x, q.rsample((particles,)), fixed).mean(0)
            optimizer.zero_grad()
            (-elbo.sum()).backward()
            optimizer.step()
            steps += 1
            history.append(elbo.mean().item())
            averaged += 1
            for total, p in zip(sums, params):
                total += p.detach()
            if len(history) == window:
                current, history = sum(history) / window, []
                if current - best < tol:
                    strikes += 1
                else:
                    best, strikes, averaged = max(best, current), 0, 0
                    sums = [torch.zeros_like(p) for p in params]
    if averaged:
        with torch.no_grad():
            for total, p in zip(sums, params):
                p.copy_(total / averaged)
    return steps


def _inverse_softplus(y):
    return y + torch.log(-torch.expm1(-y))


def full_rank_q(params):
    loc, diagonal, lower = params
    L = torch.tril(lower, -1) + torch.diag_embed(F.softplus(diagonal) + 1e-5)
    return dist.MultivariateNormal(loc, scale_tril=L)


def flow_q(params, transforms):
    loc, log_scale = params[:2]
    return Flow(dist.Normal(loc, log_scale.exp()).to_event(1), list(transforms))


def _factorised(init):
    """(loc, log sd) leaves of the Gaussian at the start of a fit: ``init`` itself or a flow's base."""
    base = init.base_dist if isinstance(init, Flow) else init
    return (base.mean.detach().clone().requires_grad_(True),
            base.stddev.detach().clamp(min=1e-4).log().clone().requires_grad_(True))


def fit_family_posterior(model, x, family, *, init=None, flow="iaf", flow_layers=FLOW_LAYERS, hidden=None,
                         fixed=None, **options):
    """q*(u_i) of ``family`` for each row of ``x``, model fixed; returns (q, steps). It starts from
    ``init``, a q over u with batch (N,): the family's encoder's q(z | x) (a full-rank Gaussian, or
    a flow of the ``flow`` guide, whose conditional networks are copied per point), or a factorised
    Gaussian (then L = its diagonal, or identity transforms on top); without one, from the FFG q*
    fitted here. ``flow``, ``flow_layers`` and ``hidden`` (the networks' width, default 2 d) shape
    fresh per-point flows; ``options`` reach :func:`polyak_fit`."""
    if family == "ffg":
        return fit_local_posterior(model, x, init=init, fixed=fixed)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if init is None:
        init, _ = fit_local_posterior(model, x, fixed=fixed)
    options = {**FAMILY_OPTIONS[family], **options}
    dim = layout_of(model, x, fixed).dim
    if family == "full_rank":
        start = init if isinstance(init, dist.MultivariateNormal) else None
        loc = (start.mean.detach().clone() if start is not None else _factorised(init)[0].detach()).requires_grad_(True)
        L = start.scale_tril.detach() if start is not None else torch.diag_embed(init.stddev.detach())
        diagonal = _inverse_softplus(L.diagonal(dim1=-2, dim2=-1).clamp(min=1e-4)).requires_grad_(True)
        lower = torch.tril(L, -1).clone().requires_grad_(True)
        params = [loc, diagonal, lower]
        steps = polyak_fit(model, x, params, full_rank_q, fixed=fixed, **options)
        return full_rank_q([p.detach() for p in params]), steps
    transforms = pointwise_flow(flow, len(x), dim, flow_layers, hidden or max(2 * dim, 8),
                                start=init if isinstance(init, Flow) else None).to(x.device)
    loc, log_scale = _factorised(init)
    params = [loc, log_scale, *transforms.parameters()]
    # Adam's first steps move every weight by about its rate: on the networks' many weights a rate like the
    # Gaussian's throws q far from its start (on MNIST, 50 latents, L[q*] fell 3 nats below the FFG q*)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": options["lr"] * FLOW_NETWORK_LR}]
    steps = polyak_fit(model, x, params, lambda p: flow_q(p, transforms), groups=groups, fixed=fixed, **options)
    for p in transforms.parameters():
        p.requires_grad_(False)
    return flow_q([loc.detach(), log_scale.detach()], transforms), steps
