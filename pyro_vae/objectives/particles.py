"""Particle objectives: IWAE, IWAE with DReG, reweighted wake-sleep and wake-sleep.

Each is a ``pyro.infer.ELBO`` whose ``loss_and_grads`` runs the guide and the
model (replayed at the guide's values) once, inside ``pyro.plate("particles",
K, dim=-2)``, left of the data plate: K draws per data point in one pass.
The log weights are per data point,

    log w_{k,i} = log p~(x_i, z_{k,i}) - log q~(z_{k,i} | x_i),

log p~ and log q~ the sums over the per-point sites of their log densities, masked as Pyro's
ELBOs mask them (``poutine.mask``, ``obs_mask``) and scaled by any ``poutine.scale`` but not by
the data plate's subsampling (``primitives.log_density``); so with K = 1 each bound's value is
``Trace_ELBO``'s estimate. Every loss is on the full-data scale: (N / B) times a sum over the B
rows of the minibatch (the data plate's scale), in nats.

Why not Pyro's own pieces: ``RenyiELBO(alpha=0)`` is the IWAE bound but its
log weights are joint over the minibatch (each particle's log-weight is the
sum over all rows, one logsumexp over the particles of that sum), a looser
bound than the per-point one and not N / B times per-point terms;
``ReweightedWakeSleep`` likewise sums each particle's log weights over the
batch before normalising ("Mini-batch training is not supported yet"). The
estimators are written here, per data point.

The models and guides must keep to the contract of ``pyro_vae.program.density``
with continuous, reparameterisable guide sites and no global latent sites
(a Bayesian decoder's weights): those have no per-point weight.
"""

import contextlib

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae.objectives.primitives import (NonReparam, add_gradients, data_scale, iwae_bound, log_density,
                                            parameters, per_point_sites)
from pyro_vae.program.density import is_per_point

PARTICLES = "particles"


def particle_traces(model, guide, args, kwargs, particles, reparameterised=True):
    """(model_trace, guide_trace): the guide run K times in one vectorised pass (its per-point sites
    batch (K, B)) and the model replayed at its values. With ``reparameterised`` False the guide's
    per-point values are drawn detached (:class:`NonReparam`, outside the particle plate)."""
    with contextlib.ExitStack() as stack:
        if not reparameterised:
            stack.enter_context(NonReparam())
        stack.enter_context(pyro.plate(PARTICLES, particles, dim=-2))
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    check_sites(model_trace, guide_trace, reparameterised)
    return model_trace, guide_trace


def check_sites(model_trace, guide_trace, reparameterised=True):
    """ValueError for a latent site these objectives cannot weight: a global latent, a model latent
    the guide does not sample, or a guide site that is not reparameterisable."""
    for role, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or (role == "model" and site["is_observed"]):
                continue
            if not is_per_point(site):
                raise ValueError(f"{role} site {name!r} is outside the data plate: particle objectives weigh "
                                 f"per-point latents only (no Bayesian decoder)")
            if role == "model" and name not in guide_trace.nodes:
                raise ValueError(f"model site {name!r} is not sampled by the guide")
            if role == "guide" and reparameterised and not site["fn"].has_rsample:
                raise ValueError(f"guide site {name!r} is not reparameterisable")


class ParticleObjective(ELBO):
    """Shared by the objectives below: ``num_particles`` K, one vectorised pass per step."""

    reparameterised = True  # whether the guide's draws keep their reparameterised path

    def __init__(self, num_particles=1):
        if num_particles < 1:
            raise ValueError(f"particles must be at least 1, got {num_particles}")
        super().__init__(num_particles=num_particles, max_plate_nesting=1)

    def traces(self, model, guide, args, kwargs):
        return particle_traces(model, guide, args, kwargs, self.num_particles, self.reparameterised)

    _get_trace = traces  # ELBO's abstract method: one vectorised pass holds every particle

    def loss(self, model, guide, *args, **kwargs):
        """-(N/B) sum_i log (1/K) sum_k w_{k,i}, the negative IWAE bound (no gradients)."""
        with torch.no_grad():
            model_trace, guide_trace = self.traces(model, guide, args, kwargs)
            log_w = log_density(model_trace) - log_density(guide_trace)
            return -(data_scale(model_trace) * iwae_bound(log_w).sum()).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        model_trace, guide_trace = self.traces(model, guide, args, kwargs)
        loss = self.backward(model, guide, args, kwargs, model_trace, guide_trace, data_scale(model_trace))
        return loss.item()

    def backward(self, model, guide, args, kwargs, model_trace, guide_trace, scale):
        """Accumulate the gradients; return the loss (a detached tensor)."""
        raise NotImplementedError


class IWAE(ParticleObjective):
    """The importance-weighted bound (Burda, Grosse & Salakhutdinov 2015), per data point:
    loss = -(N/B) sum_i log (1/K) sum_k w_{k,i}, its gradient by reparameterisation for model and guide
    alike. K = 1 is ``Trace_ELBO``'s estimator. Pyro's ``RenyiELBO(alpha=0)`` weights particles
    jointly over the minibatch (module docstring), so the bound is written here."""

    def backward(self, model, guide, args, kwargs, model_trace, guide_trace, scale):
        loss = -scale * iwae_bound(log_density(model_trace) - log_density(guide_trace)).sum()
        loss.backward()
        return loss.detach()


class IWAE_DReG(ParticleObjective):
    """The IWAE bound; the model's gradient as :class:`IWAE`'s, the guide's by the doubly
    reparameterised estimator (Tucker, Lawson, Gu & Maddison 2019): the gradient of
    -(N/B) sum_i sum_k w~_{k,i}^2 log w_{k,i}, w~ the per-point self-normalised weights (detached),
    with log q taken along z's reparameterised path only. That path term is written generically as
    log q(z; phi) - log q(sg(z); phi), the second term from the guide replayed at the detached values
    (so a hierarchical guide's later sites see detached parents). No Pyro piece does this."""

    def backward(self, model, guide, args, kwargs, model_trace, guide_trace, scale):
        log_p, log_q = log_density(model_trace), log_density(guide_trace)
        log_w = log_p - log_q
        loss = -scale * iwae_bound(log_w).sum()
        model_params = set(parameters(model_trace)) - set(parameters(guide_trace))
        add_gradients(loss, model_params, retain_graph=True)
        detached = {site["name"]: site["value"].detach() for site in per_point_sites(guide_trace)}
        with pyro.plate(PARTICLES, self.num_particles, dim=-2):
            fixed_trace = poutine.trace(poutine.condition(guide, data=detached)).get_trace(*args, **kwargs)
        path_log_w = log_p - (log_q - log_density(fixed_trace))
        weights = torch.softmax(log_w.detach(), dim=0)
        surrogate = -scale * (weights**2 * path_log_w).sum()
        add_gradients(surrogate, parameters(guide_trace))
        return loss.detach()


class ReweightedWakeSleep(ParticleObjective):
    """Reweighted wake-sleep (Bornschein & Bengio 2015; Le, Kosiorek, Siddharth, Teh & Wood 2019),
    per data point: the model follows the IWAE bound's gradient, (N/B) sum_i sum_k w~_{k,i}
    grad log p(x_i, z_{k,i}); the guide the wake-phase update (N/B) sum_i sum_k w~_{k,i}
    grad log q(z_{k,i} | x_i), z detached, w~ self-normalised per point (detached). The loss it
    reports is the negative IWAE bound. Pyro's ``ReweightedWakeSleep`` normalises the weights jointly
    over the minibatch, so it is written here."""

    reparameterised = False

    def backward(self, model, guide, args, kwargs, model_trace, guide_trace, scale):
        log_p, log_q = log_density(model_trace), log_density(guide_trace)
        log_w = log_p - log_q.detach()
        loss = -scale * iwae_bound(log_w).sum()  # its gradient: the model's IWAE gradient (z, log q detached)
        weights = torch.softmax(log_w.detach(), dim=0)
        (loss - scale * (weights * log_q).sum()).backward()
        return loss.detach()


class WakeSleep(ParticleObjective):
    """Wake-sleep (Hinton, Dayan, Frey & Neal 1995). Wake: the model's gradient of (N/B) sum_i
    log p(x_i, z_i), z_i ~ q(z | x_i) detached. Sleep: B pairs (z, x) dreamt from the model (its
    program under ``poutine.uncondition``, the dreams detached) and the guide's gradient of
    (N/B) sum_b log q(z_b | x_b) at them. One draw per point (no particles). The reported loss is
    -ELBO, (N/B) sum_i log q(z_i | x_i) - log p(x_i, z_i), at the wake draws. The guide must be
    amortized: dreamt x has no rows of its own (the guide is called with the minibatch's idx)."""

    reparameterised = False

    def __init__(self, num_particles=1):
        if num_particles != 1:
            raise ValueError("wake-sleep draws one z per point; it has no particles")
        super().__init__(num_particles=1)

    def backward(self, model, guide, args, kwargs, model_trace, guide_trace, scale):
        log_p, log_q = log_density(model_trace), log_density(guide_trace)
        (-scale * log_p.sum()).backward()  # wake: the model's parameters only (z detached)
        x, *rest = args
        with torch.no_grad():
            dream = poutine.trace(poutine.uncondition(model)).get_trace(x, *rest, **kwargs)
        values = {site["name"]: site["value"].detach() for site in per_point_sites(dream)}
        dreamt_x = next(values.pop(site["name"]) for site in per_point_sites(model_trace) if site["is_observed"])
        sleep_trace = poutine.trace(poutine.condition(guide, data=values)).get_trace(dreamt_x, *rest, **kwargs)
        (-scale * log_density(sleep_trace).sum()).backward()  # sleep: the guide's parameters only
        return -scale * (log_p.detach() - log_q.detach()).sum()
