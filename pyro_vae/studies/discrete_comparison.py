"""``python -m pyro_vae.compare --run RUN`` for a model whose latents are all discrete and drawn by its
encoder (``categorical_mlp``): NUTS, the mean-field Gaussians and the refined encoder of the continuous
comparison have nothing to move, so the rows are proposals for the same discrete z:

- ``amortized``: the run's encoder q(z | x): its ELBO (``--elbo-samples`` draws per point) and the
  importance-weighted log p(x) with K = ``--iwae-samples`` draws from it;
- ``prior``: importance sampling from p(z) itself, the proposal without an encoder;
- ``exact``: where K^M <= ``density.MAX_ENUMERATION``, log p(x) summed over every configuration
  (``model.log_marginal``); it is also the ELBO of the exact posterior p(z | x), so the gap
  log p(x) - ELBO(q) is KL(q(z | x) || p(z | x)): the inference gap of Cremer et al. (2018)
  (``pyro_vae.studies.gaps``), per point, then mean and standard error over points. It is the
  approximation gap plus the amortization gap; telling them apart needs a per-point optimum q* of the
  encoder's factorised family, not fitted here.
"""

import time

import pyro
import torch

from pyro_vae.program.estimators import elbo_terms, log_likelihood, mean_and_se
from pyro_vae.guides.categorical_mlp import CategoricalPosterior
from pyro_vae.program.posteriors import guide_posterior
from pyro_vae.studies.gaps import Gaps, plus_minus


def is_discrete_run(model):
    """Whether ``compare`` takes this module's path for ``model``."""
    return getattr(model, "sampled_discrete", False)


def row(model, proposal, x, iwae_samples, elbo_samples, fixed):
    """The report's row of ``proposal``, and its per-point ELBO (None without ``elbo_samples``)."""
    start = time.perf_counter()
    ll = log_likelihood(model, proposal, x, iwae_samples, fixed=fixed)
    result = dict(zip(("log_likelihood", "log_likelihood_se"), mean_and_se(ll)))
    elbo = None
    if elbo_samples:
        elbo = elbo_terms(model, proposal, x, samples=elbo_samples, fixed=fixed)[2]
        result.update(zip(("elbo", "elbo_se"), mean_and_se(elbo)))
    result["seconds"] = time.perf_counter() - start
    return result, elbo


@torch.no_grad()
def compare_discrete(model, guide, x, *, iwae_samples=1000, elbo_samples=200, seed=0, fixed=None):
    """The rows of the module docstring for the held-out rows ``x``, as one dict (``report.json``)."""
    pyro.set_rng_seed(seed)
    names = [f"z_{m}" for m in range(model.latent_dim)]
    prior = lambda xb: CategoricalPosterior(xb.new_zeros(len(xb), model.latent_dim, model.categories), names)  # noqa: E731
    results = {"num_points": len(x), "iwae_samples": iwae_samples, "elbo_samples": elbo_samples,
               "configurations": model.configurations}
    results["amortized"], elbo = row(model, lambda xb: guide_posterior(guide, xb, fixed=fixed), x, iwae_samples,
                                     elbo_samples, fixed)
    results["prior"], _ = row(model, prior, x, iwae_samples, 0, fixed)
    exact = model.log_marginal(x)
    if exact is not None:
        results["exact"] = dict(zip(("log_likelihood", "log_likelihood_se"), mean_and_se(exact)))
        results["exact"].update(elbo=results["exact"]["log_likelihood"], elbo_se=results["exact"]["log_likelihood_se"])
        if elbo is not None:
            results.update(Gaps(exact, elbo).summary(("inference_gap",)))
    return results


def format_discrete_report(results, dataset, run):
    k = results["iwae_samples"]
    lines = [f"# Discrete posteriors: {dataset}, {results['num_points']} held-out points", "",
             f"Decoder and encoder from `{run}`; z has {results['configurations']} joint values per point. "
             f"log p(x): importance-weighted with K = {k} draws from each proposal, or exact by enumeration; "
             f"ELBO: {results['elbo_samples']} draws per point. NUTS has no discrete moves: no row.", "",
             "| method | ELBO | log p(x) | seconds |", "|---|---|---|---|"]
    for name in ("amortized", "prior", "exact"):
        if name not in results:
            continue
        r = results[name]
        elbo = plus_minus(r, "elbo") if "elbo" in r else "-"
        seconds = f"{r['seconds']:.2f}" if "seconds" in r else "-"
        lines.append(f"| {name} | {elbo} | {plus_minus(r, 'log_likelihood')} | {seconds} |")
    if "inference_gap" in results:
        lines += ["", f"Inference gap log p(x) - ELBO(q) = KL(q(z | x) || p(z | x)) (Cremer et al. 2018: the "
                      f"approximation and amortization gaps together): {plus_minus(results, 'inference_gap')} "
                      f"nats per point."]
    else:
        lines += ["", "K^M is above the enumeration limit: no exact row."]
    return "\n".join(lines)
