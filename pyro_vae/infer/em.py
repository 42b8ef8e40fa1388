"""Closed-form EM: for a model whose posterior is tractable, no approximation is needed.

Each EM iteration (Dempster, Laird & Rubin 1977) sets q(z | x) to the exact posterior (E-step) and
maximises E_q[log p(x, z)] over the model's parameters in closed form (M-step); the log-likelihood
never decreases. The iteration is the model's own: its module registers it here, keyed by its class
(``register_closed_form``; the mixture of Gaussians, ``gmm``, in ``models/gmm.py``), beside the
parameters it writes. This module holds the registry and the one loop, :func:`run_em`, which
``--inference em`` (``pyro_vae.runs.fit_em``, refusing a model without an update) and ``compare
--fit-from-scratch`` (``pyro_vae.studies.mixture_learners``) both run; it imports no model.
"""

import time

import torch

from pyro_vae.plumbing.registry import Registry

CLOSED_FORM = Registry("closed-form update")  # model class -> update(model, x) -> log p(x) per point before it
TOLERANCE = 1e-7  # nats per point: EM stops when an iteration gains less


def register_closed_form(model_cls):
    """Decorator: ``update(model, x)`` is one EM iteration on the rows ``x`` for ``model_cls``."""
    return CLOSED_FORM.register(model_cls)


def closed_form_update(model):
    """The registered EM iteration for ``model``'s class (or a base class), or None."""
    for cls in type(model).__mro__:
        if cls in CLOSED_FORM:
            return CLOSED_FORM[cls]
    return None


def closed_form_models():
    """The registered names of the models with closed-form EM updates."""
    return sorted(cls.name for cls in CLOSED_FORM)


def run_em(model, x, max_iterations, tolerance=TOLERANCE, on_iteration=None):
    """EM on the rows ``x`` until an iteration gains less than ``tolerance`` nats per point or after
    ``max_iterations``. ``on_iteration(record)`` sees {"iteration", "log_likelihood" (before it),
    "seconds"} after each. Returns (iterations, the final mean log p(x), converged)."""
    update = closed_form_update(model)
    if update is None:
        raise ValueError(f"model {model.name} has no closed-form EM updates")
    previous, converged, iteration = None, False, 0
    for iteration in range(1, max_iterations + 1):
        start = time.perf_counter()
        value = update(model, x)
        if on_iteration is not None:
            on_iteration({"iteration": iteration, "log_likelihood": value, "seconds": time.perf_counter() - start})
        if previous is not None and value - previous < tolerance:
            converged = True
            break
        previous = value
    with torch.no_grad():
        final = float(model.log_marginal(x).double().mean())
    return iteration, final, converged
