"""The learners ``compare --fit-from-scratch`` runs on a model with closed-form EM (``gmm``).

Its posterior is tractable, so the methods differ only in how they climb the same exact
log-likelihood: closed-form EM (``pyro_vae.infer.em``), and the SVI learners below, each a guide and an
objective of the one SVI loop (``scratch.svi_curve``); every one is scored by the exact held-out
log p(x). The learning rates are set here, per learner (a mixture's parameters move much further
than a decoder's): ``compare`` has no ``--lr``.
"""

import time

import pyro
import torch

from pyro_vae.runs.assembly import build_model
from pyro_vae.infer.em import closed_form_update, run_em
from pyro_vae.program.estimators import mean_and_se

# name -> the FitConfig fields of the learner
MIXTURE_LEARNERS = {
    "enum": {"guide": "enumerated", "elbo": "enum", "lr": 0.05},
    "meanfield_vb": {"guide": "categorical_meanfield", "elbo": "enum", "lr": 0.05, "local_lr": 0.5},
    "rws": {"guide": "categorical_amortized", "elbo": "rws", "particles": 10, "lr": 0.05, "hidden_dims": (64,)},
    # at 0.05 it stalls far below the others (held-out -4.90 on gmm_synthetic, 20 passes; 0.01: -3.68)
    "score_function": {"guide": "categorical_amortized", "elbo": "score-function", "baseline": "average",
                       "lr": 0.01, "hidden_dims": (64,)},
}


def has_closed_form(config, data):
    """Whether ``config``'s model on ``data`` has closed-form EM updates (is compared by these learners)."""
    return closed_form_update(build_model(config, data)) is not None


def em_curve(config, data, heldout, passes, every, log):
    """Closed-form EM on every training point for at most ``passes`` iterations (stopping when it
    converges), the exact held-out log p(x) every ``every`` iterations and at the end."""
    pyro.set_rng_seed(config.seed)
    model = build_model(config, data)
    x = data.train_batch(torch.arange(data.num_train, device=data.device))
    curve, clock = [], {"seconds": 0.0}

    def score(iteration):
        with torch.no_grad():
            ll, se = mean_and_se(model.log_marginal(heldout))
        curve.append({"pass": iteration, "seconds": clock["seconds"], "log_likelihood": ll, "log_likelihood_se": se})
        log(f"em: iteration {iteration}, {clock['seconds']:.3f}s, held-out log p(x) {ll:.3f}")

    def track(record):
        clock["seconds"] += record["seconds"]
        if record["iteration"] % every == 0:
            score(record["iteration"])

    start = time.perf_counter()
    iterations, _, converged = run_em(model, x, passes, on_iteration=track)
    if not curve or curve[-1]["pass"] != iterations:
        score(iterations)
    curve[-1]["converged"] = converged
    log(f"em: {'converged' if converged else 'stopped'} after {iterations} iterations "
        f"({time.perf_counter() - start:.2f}s with scoring)")
    return curve
