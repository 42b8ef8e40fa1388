"""What the objectives written here share: the per-point log density of a trace, the data plate's
scale, detached draws, and gradient bookkeeping.

The objectives weigh per data point (``pyro_vae.program.density``'s contract: per-point sites in the
plate ``"data"``) and put the data plate's N / B on afterwards, so a site's log density enters per
point: masked as Pyro masks it, scaled by any ``poutine.scale`` but not by the plates' subsampling,

    log p~(site) = m * (s / s_plates) * log p(value),

m the site's mask, s its scale and s_plates the product of its plates' full / subsample sizes. For
a site under no ``poutine.scale`` s / s_plates is exactly 1 (the same products in the same order,
:func:`plates_scale`), and nothing is multiplied.
"""

import math

import torch
from pyro.poutine.messenger import Messenger

from pyro_vae.program.density import DATA_PLATE, is_per_point, site_log_prob


def plates_scale(site):
    """The factor a site's plates put on its scale: the product of full size / subsample size over
    its plates (N / B for the data plate of a minibatch), multiplied in the order Pyro's plates do
    (innermost first: ``cond_indep_stack`` lists the outermost first)."""
    scale = 1.0
    for frame in reversed(site["cond_indep_stack"]):
        scale = scale * (frame.full_size or frame.size) / frame.size
    return scale


def point_log_prob(site):
    """log p~(site) of the module docstring: its log density masked and scaled as Pyro's ELBOs count
    it, less its plates' subsampling scale."""
    return site_log_prob(site, site["scale"] / plates_scale(site))


def per_point_sites(trace):
    """The sample sites of ``trace`` in the data plate."""
    return [site for site in trace.nodes.values() if site["type"] == "sample" and is_per_point(site)]


def log_density(trace):
    """The sum of :func:`point_log_prob` over the per-point sites of ``trace``, broadcast to their
    batch shape ((K, B) in a particle plate)."""
    total = 0.0
    for site in per_point_sites(trace):
        total = total + point_log_prob(site)
    return total


def data_scale(trace):
    """N / B, the data plate's scale: the full size over the minibatch's."""
    for site in per_point_sites(trace):
        frame = next(f for f in site["cond_indep_stack"] if f.name == DATA_PLATE)
        return (frame.full_size or frame.size) / frame.size
    raise ValueError("the model has no site in the data plate")


def iwae_bound(log_w):
    """log (1/K) sum_k w_k per data point, from (K, B) log weights."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def parameters(trace):
    """The unconstrained tensors of the params a trace touched (what SVI's optimiser steps)."""
    return [site["value"].unconstrained() for site in trace.nodes.values() if site["type"] == "param"]


def add_gradients(loss, params, retain_graph=False):
    """Accumulate d loss / d params into ``.grad`` (params the loss does not reach are skipped)."""
    params = [p for p in dict.fromkeys(params) if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def detached_sampling(fn):
    """``fn`` with ``has_rsample_(False)``; a wrapper whose flag is read off its base (``Independent``)
    passes it down."""
    try:
        return fn.has_rsample_(False)
    except AttributeError:
        detached_sampling(fn.base_dist)
        return fn


class NonReparam(Messenger):
    """Unobserved per-point sample sites draw detached values (``has_rsample_(False)``); discrete
    ones, never reparameterised, get the baseline too.

    ``baseline(msg)``, when given, returns the ``infer["baseline"]`` options
    of such a site for ``TraceGraph_ELBO``. Enter it *outside* any plate
    that broadcasts the guide's sites (an expanded distribution is a new
    instance, without the flag): then this messenger sees each site last.
    """

    def __init__(self, baseline=None):
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg):
        if msg["is_observed"] or not is_per_point(msg):
            return
        if getattr(msg["fn"], "has_rsample", False):
            msg["fn"] = detached_sampling(msg["fn"])
        elif not msg["fn"].support.is_discrete:
            return
        # drawn here, not summed: a guide's enumerate mark (for --elbo enum) would make TraceGraph_ELBO warn
        msg["infer"] = {key: value for key, value in msg["infer"].items() if key != "enumerate"}
        if self.baseline is not None:
            msg["infer"] = {**msg["infer"], "baseline": self.baseline(msg)}
