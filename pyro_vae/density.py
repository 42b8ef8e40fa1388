"""The model's density, read off the model's own Pyro program.

Every method and estimator (SVI's evaluation, importance sampling, the
test-time local fits, NUTS, AIS, ``compare``) asks for log p(x, z) here, and
here it is computed by running the model with z fixed
(``poutine.condition``) under ``poutine.trace``. So any model that trains
under SVI, whatever its ``forward`` does with its inputs (a conditional VAE
whose rows carry a label, a beta-weighted prior that switches off in eval
mode), is evaluated and sampled through the same code.

Conventions a model follows (``LatentVariableModel`` does):

- the per-point latent is the sample site ``"z"``; per-point sites live in
  the plate named ``"data"`` (``building_blocks.data_plate``); every other
  site in that plate is observed;
- sites outside the data plate are global (a Bayesian decoder's weights
  ``decoder.<name>``). They are fixed by ``fixed`` (a dict site -> value)
  and are not part of log p(x, z): the densities here are those of the
  model given its global values, the plug-in decoder.
"""

import math

import pyro
import pyro.poutine as poutine
import torch

LATENT = "z"
DATA_PLATE = "data"


def _in_data_plate(site):
    return any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])


def trace_program(model, x, z, fixed=None):
    """The model's trace with z fixed at ``z`` (shape (*batch, len(x), L)).

    Leading batch dimensions of z (particles, chains) are flattened into the
    data dimension and x is repeated to match, so the program sees one flat
    dataset of prod(batch) * len(x) rows and needs no broadcasting rules of
    its own. Validation is off: training validated this model already, and
    the checks would cost about 5% of every evaluation.
    """
    batch = z.shape[:-2]
    repeats = math.prod(batch)
    x_all = x.repeat(repeats, *[1] * (x.dim() - 1)) if repeats > 1 else x
    values = {**(fixed or {}), LATENT: z if z.dim() == 2 else z.reshape(-1, z.shape[-1])}
    with pyro.validation_enabled(False):
        return poutine.trace(poutine.condition(model, data=values)).get_trace(x_all)


def _site_log_prob(site):
    log_prob = site["fn"].log_prob(site["value"])
    scale = site["scale"]
    return log_prob if isinstance(scale, float) and scale == 1.0 else log_prob * scale


def log_joint_terms(model, x, z, fixed=None):
    """(log p(x | z), log p(z)) per example and batch index, each of shape
    ``z.shape[:-1]``: the sum of the log densities of the observed sites of
    the data plate, and that of the latent site ``"z"``."""
    trace = trace_program(model, x, z, fixed)
    log_lik = log_prior = None  # sums start from the first term: no "0 +" in a recorded graph
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not _in_data_plate(site):
            continue
        if name == LATENT:
            log_prior = _site_log_prob(site)
        elif site["is_observed"]:
            term = _site_log_prob(site)
            log_lik = term if log_lik is None else log_lik + term
        else:
            raise ValueError(f"site {name!r} is a latent inside the data plate; the latent of a "
                             f"LatentVariableModel is the one site {LATENT!r}")
    if log_lik is None:
        raise ValueError(f"model {model.name} has no observed site in its data plate")
    if z.dim() == 2:
        return log_lik, log_prior
    return log_lik.reshape(z.shape[:-1]), log_prior.reshape(z.shape[:-1])


def log_joint(model, x, z, fixed=None):
    """log p(x, z) = log p(x | z) + log p(z), shape ``z.shape[:-1]``."""
    log_lik, log_prior = log_joint_terms(model, x, z, fixed)
    return log_lik + log_prior


def observation(model, x, z, fixed=None):
    """p(x | z) as the program builds it for rows ``x`` (which may carry
    inputs the model conditions on, such as a label): the distribution of the
    first observed site of the data plate, batch shape ``z.shape[:-1]`` flat."""
    trace = trace_program(model, x, z, fixed)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and name != LATENT and _in_data_plate(site):
            return site["fn"]
    raise ValueError(f"model {model.name} has no observed site in its data plate")


def plug_in_values(model, guide):
    """The global values every evaluation fixes: a Bayesian decoder at its
    posterior mean E_q[theta] (as ``decoder.<name>`` sites); nothing for a
    decoder of point estimates."""
    if not getattr(model, "bayesian_decoder", False):
        return {}
    return {f"decoder.{name}": value for name, value in guide.decoder_posterior.mean().items()}


def log_density_for_sampler(model, x, chains, fixed=None):
    """The target of NUTS and AIS: z of shape (chains, N, L) -> (log p(x, z)
    per chain, shape (chains,), and its gradient in z), the model's weights
    held fixed. The samplers record this function once (Pyro's bookkeeping
    is Python and leaves no operations in the recording); ``x`` and the
    weights are read at every call, so a recording follows them when they
    are changed in place."""

    def log_density(z):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            flat = z.reshape(-1, z.shape[-1])
            x_all = x.repeat(chains, *[1] * (x.dim() - 1))
            log_lik, log_prior = log_joint_terms(model, x_all, flat, fixed)
            value = (log_lik + log_prior).reshape(z.shape[:2]).sum(-1)
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    return log_density
