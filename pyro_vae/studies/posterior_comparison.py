"""Three inferences of p(z | x) under one fixed decoder, scored side by side.

For the given points, ``compare_posteriors`` infers p(z | x) as the encoder
q(z | x) (``amortized``), a per-point factorised Gaussian q*(z) optimised
with the decoder fixed (``meanfield``, classical VB) and NUTS (the
reference), and scores each: the ELBO, the importance-sampled log p(x) with
the same K for all, the error of posterior means and the ratio of posterior
standard deviations against NUTS, KL(q || N_nuts) where N_nuts is the
Gaussian moment-matched to each point's NUTS draws, and wall time; then the
gap decomposition of Cremer, Li & Duvenaud (2018) (``pyro_vae.studies.gaps``):
approximation gap = log p(x) - L[q*], amortization gap = L[q*] - L[q_encoder],
with standard errors over points. log p(x) there is the importance-weighted estimate with
the NUTS proposal, the tightest of the three. For a model with a closed
form (``linear_gaussian``) an ``exact`` row and the exact approximation gap
are added. ``format_report`` writes it as markdown.
"""

import time

import arviz as az
import pyro
import pyro.distributions as dist
import torch

from pyro_vae.program.density import layout_of
from pyro_vae.program.estimators import elbo_terms, log_likelihood, mean_and_se
from pyro_vae.guides.semi_amortized import SemiAmortizedGuide
from pyro_vae.infer.ais import AISOptions, ais_log_likelihood
from pyro_vae.infer.local_fit import fit_local_posterior
from pyro_vae.infer.mcmc.sampling import diagnose, inference_data, sample_latents
from pyro_vae.infer.moment_matching import moment_matched
from pyro_vae.program.posteriors import as_posterior, guide_posterior
from pyro_vae.studies.gaps import Gaps, plus_minus

SUMMARY_DRAWS = 1000  # draws behind the Gaussian summary of a posterior over several latent sites

METHODS = ("amortized", "semi_amortized", "meanfield", "nuts")
# The semi_amortized row refines the encoder's q with the guide's own refinement (SemiAmortizedGuide.refine),
# with 8 reparameterised draws a step at lr 0.05 instead of the training-time 1 at 0.1: at test time the
# refined q is the answer, not a step the encoder follows, and 20 one-draw steps at 0.1 on linear_gaussian
# ended below the encoder's own ELBO (-21.60 against -21.41 per point, tests/test_compare.py's problem).
REFINE_LR, REFINE_PARTICLES = 0.05, 8


def as_full_gaussian(q):
    """A batch of MultivariateNormal with q's means and covariances (a flow's: moment-matched to
    ``SUMMARY_DRAWS`` of its draws, as it has no closed-form ones)."""
    if isinstance(q, dist.MultivariateNormal):
        return q
    if isinstance(q, torch.distributions.TransformedDistribution):
        with torch.no_grad():
            return moment_matched(q.sample((SUMMARY_DRAWS,)).unsqueeze(0))
    return dist.MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))


def gaussian_summary(q, layout):
    """q as a Gaussian over the flat unconstrained latents u: itself, with its full covariance, for a
    model whose one site is u (the built-in models); else the Gaussian moment-matched to
    ``SUMMARY_DRAWS`` draws of u (the accuracy columns then compare these summaries)."""
    if layout.is_identity():
        return as_full_gaussian(q)
    return moment_matched(layout.flatten(q.sample((SUMMARY_DRAWS,))).unsqueeze(0))


def posterior_idata(q, x, draws=1000):
    """An SVI posterior as InferenceData: ``draws`` samples of q, one chain, a variable per site."""
    values = q.sample((draws,))
    if isinstance(values, dict):
        dims = {name: ["point", *[f"{name}_dim_{i}" for i in range(value.dim() - 2)]] for name, value in values.items()}
    else:  # one site, (draws, N, *event): a vector named as NUTS's InferenceData names the built-in models' z
        event = ["latent"] if values.dim() == 3 else [f"z_dim_{i}" for i in range(values.dim() - 2)]
        values, dims = {"z": values}, {"z": ["point", *event]}
    return az.from_dict(posterior={name: value.unsqueeze(0).cpu().numpy() for name, value in values.items()},
                        observed_data={"x": x.cpu().numpy()}, dims={**dims, "x": ["point", "feature"]})


class Posteriors(dict):
    """name -> q(z | x) for the compared points, with each method's wall
    time (``seconds``), the NUTS draws and their InferenceData."""


def infer_posteriors(model, encoder, x, *, chains, warmup, samples, seed, progress=False, fixed=None,
                     refine_steps=20):
    """p(z | x) for the rows of ``x`` by the encoder, the encoder refined by
    ``refine_steps`` Adam steps (semi-amortized), a per-point mean-field fit
    and NUTS (started from the encoder's q), each timed (the semi-amortized
    time includes the encoder's)."""
    posteriors = Posteriors()
    posteriors.seconds = {}
    layout = layout_of(model, x, fixed)
    start = time.perf_counter()
    with torch.no_grad():
        posteriors["amortized"] = guide_posterior(encoder, x, fixed=fixed)
    posteriors.seconds["amortized"] = time.perf_counter() - start
    q0 = posteriors["amortized"]
    if not layout.is_identity():  # a program over several sites: refined from its diagonal Gaussian summary in u
        summary = gaussian_summary(q0, layout)
        q0 = dist.Normal(summary.mean, summary.variance.sqrt()).to_event(1)
    refined = SemiAmortizedGuide.refine(model, x, q0, steps=refine_steps, lr=REFINE_LR, particles=REFINE_PARTICLES,
                                        fixed=fixed)
    posteriors["semi_amortized"] = as_posterior(refined, layout)
    posteriors.seconds["semi_amortized"] = time.perf_counter() - start
    start = time.perf_counter()
    meanfield, posteriors.meanfield_steps = fit_local_posterior(model, x, fixed=fixed)
    posteriors["meanfield"] = as_posterior(meanfield, layout)
    posteriors.seconds["meanfield"] = time.perf_counter() - start
    posteriors.draws, stats, posteriors.seconds["nuts"] = sample_latents(
        model, x, chains=chains, warmup=warmup, samples=samples, init=posteriors["amortized"], seed=seed,
        progress=progress, fixed=fixed)
    posteriors.reference = moment_matched(posteriors.draws)  # N_nuts over u
    posteriors["nuts"] = as_posterior(posteriors.reference, layout)
    posteriors.nuts_idata = inference_data(posteriors.draws, stats, x, layout)
    return posteriors


def score(model, q, x, reference, *, iwae_samples, elbo_samples, fixed=None):
    """Per-point ELBO and log p(x) of ``q``, and its summary row against the NUTS ``reference``
    (a Gaussian over u; q enters the accuracy columns through :func:`gaussian_summary`)."""
    elbo = elbo_terms(model, lambda _: q, x, samples=elbo_samples, batch_size=len(x), fixed=fixed)[2]
    ll = log_likelihood(model, lambda _: q, x, iwae_samples, batch_size=len(x), fixed=fixed)
    gaussian = gaussian_summary(q, layout_of(model, x, fixed))
    kl = torch.distributions.kl_divergence(gaussian, reference)
    row = {
        "elbo": mean_and_se(elbo)[0], "elbo_se": mean_and_se(elbo)[1],
        "log_likelihood": mean_and_se(ll)[0], "log_likelihood_se": mean_and_se(ll)[1],
        "mean_error": float((gaussian.mean - reference.mean).pow(2).sum(-1).sqrt().mean()),
        "sd_ratio": float((gaussian.variance.sqrt() / reference.variance.sqrt()).mean()),
        "kl_to_nuts": float(kl.mean()),
    }
    return row, {"elbo": elbo, "log_likelihood": ll}


def exact_row(model, x, reference):
    """The closed-form posterior and log p(x) of a model that has them (the row, and log p(x) per point)."""
    with torch.no_grad():
        exact = model.exact_posterior(x)
        exact_ll = model.log_marginal(x)
    row = {
        "log_likelihood": mean_and_se(exact_ll)[0], "log_likelihood_se": mean_and_se(exact_ll)[1],
        "mean_error": float((exact.mean - reference.mean).pow(2).sum(-1).sqrt().mean()),
        "sd_ratio": float((exact.variance.sqrt() / reference.variance.sqrt()).mean()),
        "kl_to_nuts": float(torch.distributions.kl_divergence(exact, reference).mean()),
    }
    return row, exact_ll


def ais_log_px(model, x, q, steps, chains, seed, fixed):
    """log p(x) per point by AIS from ``q`` (the Gaussian moment-matched to
    NUTS), and its summary for the report."""
    result = ais_log_likelihood(model, x, AISOptions(steps=steps, chains=chains, start=lambda _: q), fixed=fixed,
                                seed=seed)
    return result.log_likelihood, {"log_likelihood": result.mean, "log_likelihood_se": result.se, "steps": steps,
                                   "chains": chains, "acceptance": float(result.acceptance.mean()),
                                   "seconds": result.seconds}


def compare_posteriors(model, encoder, x, *, iwae_samples=1000, elbo_samples=200, chains=4, warmup=1000,
                       samples=1000, seed=0, progress=False, fixed=None, refine_steps=20, ais_steps=None,
                       ais_chains=16):
    """Infer p(z | x) for the rows of ``x`` four ways under the fixed decoder of
    ``model`` and score each. log p(x) for the gaps is the importance-weighted
    estimate with the NUTS proposal, or, with ``ais_steps``, AIS started
    from that proposal (tight where a Gaussian proposal is loose: 50-D
    latents). Returns (results dict, posteriors dict, NUTS draws, InferenceData of NUTS)."""
    pyro.set_rng_seed(seed)
    posteriors = infer_posteriors(model, encoder, x, chains=chains, warmup=warmup, samples=samples, seed=seed,
                                  progress=progress, fixed=fixed, refine_steps=refine_steps)
    _, nuts_figures, nuts_warnings = diagnose(posteriors.nuts_idata, chains)
    reference = posteriors.reference
    per_point = {}
    results = {"num_points": len(x), "iwae_samples": iwae_samples, "elbo_samples": elbo_samples}
    for name in METHODS:
        results[name], per_point[name] = score(model, posteriors[name], x, reference, iwae_samples=iwae_samples,
                                               elbo_samples=elbo_samples, fixed=fixed)
        results[name].update(seconds=posteriors.seconds[name], seconds_per_point=posteriors.seconds[name] / len(x))
    results["meanfield"]["steps"] = posteriors.meanfield_steps
    results["semi_amortized"]["steps"] = refine_steps
    # how much of the amortization gap K refinement steps close
    results["semi_amortized_closes"] = mean_and_se(per_point["semi_amortized"]["elbo"] - per_point["amortized"]["elbo"])
    results["nuts"].update(nuts_figures, warnings=nuts_warnings, chains=chains, warmup=warmup, samples=samples,
                           converged=not nuts_warnings or all("effective sample" in w for w in nuts_warnings))
    results["nuts"]["elbo_note"] = "ELBO of the Gaussian moment-matched to the draws"

    # Cremer, Li & Duvenaud (2018): gaps per point, then mean and s.e.
    meanfield_elbo = per_point["meanfield"]["elbo"]
    log_px = per_point["nuts"]["log_likelihood"]
    results["log_likelihood_for_gaps"] = "importance-weighted, NUTS proposal"
    if ais_steps:
        log_px, results["ais"] = ais_log_px(model, x, posteriors["nuts"], ais_steps, ais_chains, seed, fixed)
        results["log_likelihood_for_gaps"] = f"AIS, {ais_chains} chains x {ais_steps} steps from the NUTS proposal"
    amortized_elbo = per_point["amortized"]["elbo"]
    results.update(Gaps(log_px, amortized_elbo, meanfield_elbo).summary(("approximation_gap", "amortization_gap")))
    if hasattr(model, "exact_posterior"):
        results["exact"], exact_ll = exact_row(model, x, reference)
        exact = Gaps(exact_ll, amortized_elbo, meanfield_elbo).summary(("approximation_gap",))
        results.update({f"exact_{name}": value for name, value in exact.items()})
    return results, dict(posteriors), posteriors.draws, posteriors.nuts_idata


def format_report(results, dataset, run):
    rows = [*METHODS, "exact"] if "exact" in results else list(METHODS)
    lines = [f"# Posterior comparison: {dataset}, {results['num_points']} held-out points",
             "", f"Decoder from `{run}`. log p(x): importance-weighted, K = {results['iwae_samples']} for every "
             f"method; ELBO: {results['elbo_samples']} draws per point; errors and KL against NUTS "
             f"(KL(q || N_nuts), N_nuts the Gaussian moment-matched to each point's draws).", "",
             "| method | ELBO | log p(x) | mean error | sd ratio | KL to NUTS | seconds | s / point |",
             "|---|---|---|---|---|---|---|---|"]
    for name in rows:
        r = results[name]
        elbo = plus_minus(r, "elbo") if "elbo" in r else "-"
        seconds = (f"{r['seconds']:.3f}", f"{r['seconds_per_point']:.2e}") if "seconds" in r else ("-", "-")
        label = name
        if name == "nuts" and not r["converged"]:
            label = "nuts ⚠ not converged"
        lines.append(f"| {label} | {elbo} | {plus_minus(r, 'log_likelihood')} | "
                     f"{r['mean_error']:.4f} | {r['sd_ratio']:.3f} | {max(r['kl_to_nuts'], 0.0):.4f} | {seconds[0]} | {seconds[1]} |")
    nuts = results["nuts"]
    r_hat = "n/a (one chain)" if nuts["max_r_hat"] is None else f"{nuts['max_r_hat']:.3f}"
    lines += ["", f"NUTS: {nuts['chains']} chains x ({nuts['warmup']} warm-up + {nuts['samples']} draws), "
                  f"{nuts['divergences']} divergences, max R-hat {r_hat}, min bulk ESS {nuts['min_ess_bulk']:.0f}, "
                  f"min tail ESS {nuts['min_ess_tail']:.0f}. Its ELBO is that of the moment-matched Gaussian."]
    for warning in nuts["warnings"]:
        lines.append(f"- warning: {warning}")
    if "ais" in results:
        a = results["ais"]
        lines += ["", f"AIS: log p(x) = {plus_minus(a, 'log_likelihood')} ({a['chains']} chains "
                      f"x {a['steps']} steps from the NUTS proposal, acceptance {a['acceptance']:.2f}, "
                      f"{a['seconds']:.1f} s)."]
    lines += ["", f"## Gaps (Cremer, Li & Duvenaud 2018), nats per point; log p(x): {results['log_likelihood_for_gaps']}",
              "",
              f"- approximation gap log p(x) - L[q*] = {plus_minus(results, 'approximation_gap')}",
              f"- amortization gap L[q*] - L[q_encoder] = {plus_minus(results, 'amortization_gap')}, of which "
              f"{results['semi_amortized']['steps']} refinement "
              f"steps of the encoder's q close {results['semi_amortized_closes'][0]:.3f} ± "
              f"{results['semi_amortized_closes'][1]:.3f}"]
    if "exact_approximation_gap" in results:
        lines.append(f"- exact approximation gap (closed-form log p(x)) = "
                     f"{plus_minus(results, 'exact_approximation_gap')}")
    lines += ["", f"Per new point: the encoder takes {results['amortized']['seconds_per_point']:.2e} s, the mean-field "
                  f"fit {results['meanfield']['seconds_per_point']:.2e} s ({results['meanfield']['steps']} Adam steps), "
                  f"the encoder plus {results['semi_amortized']['steps']} refinement steps "
                  f"{results['semi_amortized']['seconds_per_point']:.2e} s, "
                  f"NUTS {results['nuts']['seconds_per_point']:.2e} s: what amortization buys."]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"
