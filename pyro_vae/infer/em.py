"""Closed-form EM: for a model whose posterior is tractable, no approximation is needed.

Each EM iteration (Dempster, Laird & Rubin 1977) sets q(z | x) to the exact posterior (E-step) and
maximises E_q[log p(x, z)] over the model's parameters in closed form (M-step); the log-likelihood
never decreases. A model is not told how it is inferred: its updates are registered here, keyed by
its class (``register_closed_form``), and ``--inference em`` (``pyro_vae.runs.fit_em``) refuses a model
without them.

The mixture of Gaussians (Bishop 2006, 9.2), ``gmm``: with responsibilities r_ik = p(z_i = k | x_i)
and N_k = sum_i r_ik,

    pi_k = N_k / N,   mu_k = sum_i r_ik x_i / N_k,
    Sigma_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k + eps I   (diagonal: its diagonal),

eps = ``REGULARIZATION`` keeping a component that collapses onto one point finite (scikit-learn's
``reg_covar``). The sums run in float64.
"""

import time

import torch

from pyro_vae.models.gmm import GaussianMixture

CLOSED_FORM = {}  # model class -> update(model, x) -> log p(x) per point before the update
REGULARIZATION = 1e-6
TOLERANCE = 1e-7  # nats per point: EM stops when an iteration gains less


def register_closed_form(model_cls):
    """Decorator: ``update(model, x)`` is one EM iteration on the rows ``x`` for ``model_cls``."""

    def decorate(update):
        CLOSED_FORM[model_cls] = update
        return update

    return decorate


def closed_form_update(model):
    """The registered EM iteration for ``model``'s class (or a base class), or None."""
    for cls in type(model).__mro__:
        if cls in CLOSED_FORM:
            return CLOSED_FORM[cls]
    return None


def closed_form_models():
    """The registered names of the models with closed-form EM updates."""
    return sorted(cls.name for cls in CLOSED_FORM)


@register_closed_form(GaussianMixture)
@torch.no_grad()
def gmm_update(model, x):
    """One E-step and M-step of the mixture on ``x`` (module docstring); returns the mean log p(x)
    per point under the parameters before the step."""
    joint = model.joint_per_component(x).double()  # log pi_k + log N(x_i; mu_k, Sigma_k), (N, K)
    log_px = joint.logsumexp(-1)
    r = torch.softmax(joint, -1)
    x = x.double()
    counts = r.sum(0) + 10 * torch.finfo(torch.float64).tiny
    locs = (r.T @ x) / counts[:, None]
    if model.covariance == "diag":
        covariances = (r.T @ x**2) / counts[:, None] - locs**2
        covariances = covariances.clamp(min=0) + REGULARIZATION
    else:
        diff = x.unsqueeze(0) - locs.unsqueeze(1)  # (K, N, D)
        covariances = torch.einsum("nk,kni,knj->kij", r, diff, diff) / counts[:, None, None]
        covariances = covariances + REGULARIZATION * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    model.set_parameters(counts / len(x), locs, covariances)
    return float(log_px.mean())


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
