"""The per-point optimum q* of each variational family, with the model's weights fixed: the test-time
local fits behind Cremer, Li & Duvenaud's (2018) gap decomposition, one per family.

- ``ffg``: a factorised Gaussian per point (:func:`pyro_vae.infer.local_fit.fit_local_posterior`);
- ``full_rank``: N(m_i, L_i L_i^T) per point, m (N, d) and the lower-triangular L (N, d, d) free;
- ``flow``: per point, a factorised Gaussian pushed through ``layers`` autoregressive transforms of
  the guide's kind (Pyro's ``AffineAutoregressive`` or ``SplineAutoregressive``) whose networks have
  their own weights for each point (``pyro_vae.nn.flows.PointwiseARN``: all N flows in one batched
  tensor program, so no point's parameters touch another's).

Every family is fitted by the one per-point fitter, :func:`pyro_vae.infer.local_fit.fit_local`, with
its one stopping rule (``patience`` windows in a row whose mean ELBO gains less than ``tol`` on the best
window so far); only Adam's rate, the draws per step and the patience are the family's own
(``FAMILY_OPTIONS``). A fit starts from
``init``: in the gap decomposition (``pyro_vae.studies.family_gaps``) the family's own encoder
q(z | x), so that q* is the local optimum the encoder was aiming at.
"""

import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_vae.program.density import layout_of
from pyro_vae.nn.flows import FLOW_LAYERS, Flow, pointwise_flow
from pyro_vae.infer.local_fit import fit_local, fit_local_posterior

FAMILIES = ("ffg", "full_rank", "flow")
GUIDE_OF = {"ffg": "amortized", "full_rank": "full_rank", "flow": "flow"}  # the amortized guide of each family
# Adam's rate, draws per step and patience of each richer family (the rest, fit_local's defaults). Their q*
# start from a good q and gain little per window, so one window without a gain is noise, not convergence:
# on MNIST (latent 50, 100 points) full_rank stopped after 250 steps at an approximation gap of 1.70 with
# three windows of patience, and reached 0.28 after 400 with six and tol 1e-4; with the rate 0.05 and 8 draws
# it ended 1.5 nats lower (docs/benchmarks.md, "Gaps per variational family on MNIST")
FAMILY_OPTIONS = {"full_rank": {"lr": 0.02, "num_particles": 16, "patience": 6, "tol": 1e-4},
                  "flow": {"lr": 0.01, "patience": 3}}
FLOW_NETWORK_LR = 0.1  # the per-point flows' networks: this times the family's rate


def family_of(guide):
    """The family of a guide: its ``family`` attribute, ``ffg`` for the factorised Gaussian ones."""
    return getattr(guide, "family", "ffg")


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
    fresh per-point flows; ``options`` reach :func:`fit_local`."""
    if family == "ffg":
        return fit_local_posterior(model, x, init=init, fixed=fixed, **options)
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
        steps = fit_local(model, x, params, full_rank_q, fixed=fixed, **options)
        return full_rank_q([p.detach() for p in params]), steps
    transforms = pointwise_flow(flow, len(x), dim, flow_layers, hidden or max(2 * dim, 8),
                                start=init if isinstance(init, Flow) and init.conditioned_on else None).to(x.device)
    loc, log_scale = _factorised(init)
    params = [loc, log_scale, *transforms.parameters()]
    # Adam's first steps move every weight by about its rate: on the networks' many weights a rate like the
    # Gaussian's throws q far from its start (on MNIST, 50 latents, L[q*] fell 3 nats below the FFG q*)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": options["lr"] * FLOW_NETWORK_LR}]
    steps = fit_local(model, x, params, lambda p: flow_q(p, transforms), groups=groups, fixed=fixed, **options)
    for p in transforms.parameters():
        p.requires_grad_(False)
    return flow_q([loc.detach(), log_scale.detach()], transforms), steps
