"""Models whose latents are all discrete (a mixture's assignment): everything is a finite sum.

``pyro_vae.program.density`` already sums a program's discrete sites out in parallel, so for such a model
log p(x) itself is exact and no proposal is needed. What this module adds is the other side, for a
model with one discrete per-point site ``z`` of K values:

- :func:`joint_table`: log p(x_i, z_i = k) and log p(z_i = k), (N, K) each, read off the enumerated
  program (the values in ``enumerate_support`` order);
- :func:`exact_posterior`: p(z | x) = softmax_k log p(x, z = k), as ``OneHotCategorical`` (its
  ``mean`` is the responsibilities);
- :func:`exact_terms`: per point E_q[log p(x | z)] and KL(q(z | x) || p(z)) summed over the K values
  exactly, for a q with ``probs`` (N, K) (a categorical guide's ``posterior``); their difference is
  the ELBO, log p(x) - KL(q || p(z | x)).
"""

import pyro.distributions as dist
import torch

from pyro_vae.program.density import _per_point_sites, layout_of, site_log_prob, trace_program


def summed_out(model, x, fixed=None):
    """Whether every per-point latent of ``model`` is discrete (so log p(x) is an exact sum)."""
    if getattr(model, "sampled_discrete", False):  # its proposal draws the discrete values (categorical_mlp)
        return False
    layout = layout_of(model, x, fixed)
    return bool(layout.discrete) and not layout.continuous


def joint_table(model, x, fixed=None):
    """(log p(x_i, z_i = k), log p(z_i = k)), each (N, K), for a model with one discrete latent site."""
    layout = layout_of(model, x, fixed)
    if len(layout.discrete) != 1 or layout.continuous:
        raise ValueError(f"model {getattr(model, 'name', model)}: a table over z needs exactly one discrete latent "
                         f"site and no continuous one (it has {', '.join([*layout.discrete, *layout.names])})")
    trace, _ = trace_program(model, x, {}, fixed)
    joint, prior = 0.0, None
    for name, site in _per_point_sites(trace):
        term = site_log_prob(site)
        joint = joint + term
        if name in layout.discrete:
            prior = term
    size = len(x)
    joint, prior = joint.reshape(-1, size), prior.expand_as(joint).reshape(-1, size)
    return joint.T, prior.T


def exact_posterior(model, x, fixed=None):
    """p(z | x) for the rows ``x``: ``OneHotCategorical`` over the one discrete site's K values."""
    joint, _ = joint_table(model, x, fixed)
    return dist.OneHotCategorical(logits=torch.log_softmax(joint, -1))


def exact_terms(model, q, x, fixed=None):
    """(reconstruction, kl) per row of ``x``: sum_k q_k log p(x | z = k) and sum_k q_k (log q_k -
    log p(z = k)), with q_k = ``q.probs``; None unless the model has one discrete site and ``q`` is a
    table of its K values per row (then the caller samples)."""
    if len(layout_of(model, x, fixed).discrete) != 1:
        return None
    joint, prior = joint_table(model, x, fixed)
    probs = getattr(q, "probs", None)
    if probs is None or probs.shape != joint.shape:
        return None
    log_q = probs.clamp(min=torch.finfo(probs.dtype).tiny).log()
    reconstruction = (probs * (joint - prior)).sum(-1)
    kl = (probs * (log_q - prior)).sum(-1)
    return reconstruction, kl
