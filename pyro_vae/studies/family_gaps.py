"""The gap decomposition of Cremer, Li & Duvenaud (2018) for each variational family.

For a family (``ffg``: the factorised Gaussian of the ``amortized`` guide; ``full_rank``; ``flow``)
and its own trained model (decoder and encoder): on held-out points x,

- L[q]: the ELBO of the family's encoder q(z | x);
- L[q*]: the ELBO of the family's per-point optimum with the decoder fixed
  (``pyro_vae.infer.local_families``, every family by the one per-point fitter and stopping rule of
  ``pyro_vae.infer.local_fit``), its optimisation started from the family's encoder q;
- log p(x): exact where the model has ``log_marginal`` (``linear_gaussian``), else AIS
  (``ais_steps``) from the FFG q* (fitted from the encoder's means and sds), else importance
  sampling (K = ``iwae_samples``) from q*;
- approximation gap log p(x) - L[q*] and amortization gap L[q*] - L[q], per point, then mean and
  standard error over points (``pyro_vae.studies.gaps``);
- with ``nuts`` settings, NUTS started from the family's q gives the reference for the accuracy
  columns (mean error and sd ratio of q and q* against it), as in ``compare``'s table.

``train_family`` trains each family's model with the one SVI loop (``fit_svi``) under the same
settings; ``decompose`` scores one; ``format_families`` and ``save_gap_bars`` write the side-by-side
table and the stacked bars; ``compare_families`` (``python -m pyro_vae.compare --families``) does all.
"""

import copy
import time

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure

from pyro_vae.plumbing.cli import UsageError, names_in
from pyro_vae.program.density import layout_of
from pyro_vae.program.estimators import elbo_terms, log_likelihood
from pyro_vae.plumbing.files import atomic_path, write_json, write_text
from pyro_vae.runs.fit_svi import fit_svi
from pyro_vae.nn.flows import FLOW_LAYERS
from pyro_vae.infer.ais import AISOptions, ais_log_likelihood
from pyro_vae.infer.local_families import FAMILIES, GUIDE_OF, family_of, fit_family_posterior
from pyro_vae.infer.mcmc.sampling import sample_latents
from pyro_vae.infer.moment_matching import moment_matched
from pyro_vae.studies.gaps import Gaps, plus_minus
from pyro_vae.studies.posterior_comparison import gaussian_summary
from pyro_vae.program.posteriors import as_posterior, guide_posterior
from pyro_vae.runs.rundir import load_run


# the figures of each family's row, in its column order
FIGURES = ("log_px", "elbo_q_star", "elbo_q", "approximation_gap", "amortization_gap")


def parse_families(text):
    """``ffg,full_rank,flow`` -> a tuple of family names; UsageError naming an unknown one."""
    names, unknown = names_in(text, FAMILIES)
    if unknown or not names:
        raise UsageError(f"--families: unknown family {', '.join(map(repr, unknown)) or repr(text)}; "
                         f"choose from {', '.join(FAMILIES)}")
    return names


def train_family(base, family, out, progress=False, log=print):
    """``base`` (a FitConfig) trained with the family's guide into ``out``; returns the FitResult."""
    config = copy.deepcopy(base)
    config.guide, config.out = GUIDE_OF[family], str(out)
    if family != "flow":
        config.flow = config.flow_layers = None
    config.validate()
    return fit_svi(config, progress=progress, log=log)


def accuracy(q, reference, layout):
    """Mean error (Euclidean, averaged over points) and mean sd ratio of q against ``reference``."""
    g = gaussian_summary(q, layout)
    return (float((g.mean - reference.mean).pow(2).sum(-1).sqrt().mean()),
            float((g.variance.sqrt() / reference.variance.sqrt()).mean()))


def log_px_for_gaps(model, x, star, ffg_star, *, ais_steps, ais_chains, iwae_samples, seed, fixed):
    """(per-point log p(x), how it was estimated): exact, AIS from the FFG q* (``ffg_star()``, fitted
    only then), or IS from q*."""
    if hasattr(model, "log_marginal"):
        with torch.no_grad():
            return model.log_marginal(x), "exact (closed form)"
    if ais_steps:
        start = ffg_star()
        result = ais_log_likelihood(model, x, AISOptions(steps=ais_steps, chains=ais_chains, start=lambda _: start),
                                    fixed=fixed, seed=seed)
        return result.log_likelihood, f"AIS, {ais_chains} chains x {ais_steps} steps from the FFG q*"
    ll = log_likelihood(model, lambda _: star, x, iwae_samples, batch_size=len(x), fixed=fixed)
    return ll, f"importance sampling from q*, K = {iwae_samples}"


def decompose(model, guide, x, *, elbo_samples=200, iwae_samples=1000, ais_steps=None, ais_chains=16, nuts=None,
              seed=0, fixed=None):
    """The decomposition for ``guide``'s family under ``model`` on the rows ``x``; ``nuts`` is None or
    (chains, warmup, samples). Returns (row dict, per-point tensors dict)."""
    family = family_of(guide)
    layout = layout_of(model, x, fixed)
    with torch.no_grad():
        q = guide_posterior(guide, x, fixed=fixed)
    # q* starts from the encoder's q where q is over u: the FFG from its means and sds, the others from q itself
    gaussian = dist.Normal(q.mean, q.stddev).to_event(1) if layout.is_identity() else None
    init = gaussian if family == "ffg" or gaussian is None else q

    def ffg_star():  # AIS's start, fitted only for it: the FFG q* from the encoder's moments
        if family == "ffg":
            return star
        return as_posterior(fit_family_posterior(model, x, "ffg", init=gaussian, fixed=fixed)[0], layout)

    start = time.perf_counter()
    star, steps = fit_family_posterior(model, x, family, init=init, flow=getattr(guide, "flow", "iaf"),
                                       flow_layers=getattr(guide, "flow_layers", FLOW_LAYERS), fixed=fixed)
    star_seconds = time.perf_counter() - start
    star = as_posterior(star, layout)
    elbo_q = elbo_terms(model, lambda _: q, x, samples=elbo_samples, batch_size=len(x), fixed=fixed)[2]
    elbo_star = elbo_terms(model, lambda _: star, x, samples=elbo_samples, batch_size=len(x), fixed=fixed)[2]
    log_px, how = log_px_for_gaps(model, x, star, ffg_star, ais_steps=ais_steps, ais_chains=ais_chains,
                                  iwae_samples=iwae_samples, seed=seed, fixed=fixed)
    gaps = Gaps(log_px, elbo_q, elbo_star)
    per_point = gaps.per_point()
    row = {"family": family, "guide": guide.name, "log_px_estimate": how, "q_star_steps": steps,
           "q_star_seconds": star_seconds, "num_points": len(x)}
    if family == "flow":
        row["flow"] = f"{guide.flow}, {guide.flow_layers} layers"
    row.update(gaps.summary(FIGURES))
    if nuts is not None:
        chains, warmup, samples = nuts
        draws, _, row["nuts_seconds"] = sample_latents(model, x, chains=chains, warmup=warmup, samples=samples,
                                                       init=q, seed=seed, fixed=fixed)
        reference = moment_matched(draws)
        row["q_mean_error"], row["q_sd_ratio"] = accuracy(q, reference, layout)
        row["q_star_mean_error"], row["q_star_sd_ratio"] = accuracy(star, reference, layout)
    return row, per_point


def cremer_holds(rows):
    """The families whose amortization gap exceeds their approximation gap (Cremer et al.'s finding)."""
    return [r["family"] for r in rows if r["amortization_gap"] > r["approximation_gap"]]


def format_families(rows, dataset, title="Gaps per variational family"):
    """The decomposition of every family, side by side, as markdown."""
    lines = [f"# {title} (Cremer, Li & Duvenaud 2018): {dataset}, {rows[0]['num_points']} held-out points", "",
             "Nats per point, ± one standard error over points; each family with its own trained decoder.", "",
             "| family | log p(x) | L[q*] | L[q] | approximation gap | amortization gap | q* steps | "
             "mean error q / q* | sd ratio q / q* |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["family"] + (f" ({r['flow']})" if "flow" in r else "")
        accuracy_cells = (f"{r['q_mean_error']:.3f} / {r['q_star_mean_error']:.3f} | "
                          f"{r['q_sd_ratio']:.3f} / {r['q_star_sd_ratio']:.3f}") if "q_mean_error" in r else "- | -"
        figures = " | ".join(plus_minus(r, name) for name in FIGURES)
        lines.append(f"| {label} | {figures} | {r['q_star_steps']} | {accuracy_cells} |")
    holds = cremer_holds(rows)
    lines += ["", f"log p(x): {rows[0]['log_px_estimate']}. Accuracy columns: against the Gaussian moment-matched to "
                  "NUTS draws (NUTS started from the family's q), where run.",
              f"Amortization gap > approximation gap (Cremer et al.'s finding) for: "
              f"{', '.join(holds) if holds else 'none'} of {', '.join(r['family'] for r in rows)}."]
    return "\n".join(lines) + "\n"


def save_gap_bars(path, rows):
    """Stacked bars: per family the approximation gap (bottom) and the amortization gap (top),
    each with its standard error."""
    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 3.6))
    ax = fig.add_subplot()
    names = [r["family"] for r in rows]
    approx = [r["approximation_gap"] for r in rows]
    amort = [r["amortization_gap"] for r in rows]
    ax.bar(names, approx, yerr=[r["approximation_gap_se"] for r in rows], label="approximation gap", color="#4c72b0")
    ax.bar(names, amort, bottom=approx, yerr=[r["amortization_gap_se"] for r in rows], label="amortization gap",
           color="#dd8452")
    ax.set_ylabel("nats per point")
    ax.set_title("inference gap log p(x) - L[q] by family")
    ax.legend(frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def compare_families(base, families, out, *, subset, nuts=None, seed=0, progress=False, log=print, reuse=None,
                     **options):
    """Train each family's model from the FitConfig ``base`` (``train_family``; or, with ``reuse``, load
    ``reuse/<family>-run`` written by an earlier call), decompose its gaps on the first ``subset``
    test points (``decompose``, ``options`` passed on), and write ``families.md``, ``families.json``
    and ``gaps.png`` into ``out``. Returns the rows."""
    rows, dataset = [], base.dataset
    for family in families:
        log(f"family {family}: {'loading' if reuse else 'training'} guide {GUIDE_OF[family]}")
        result = (load_run(reuse / f"{family}-run", torch.device("cpu")) if reuse
                  else train_family(base, family, out / f"{family}-run", progress, log))
        result.model.eval()
        result.guide.eval()
        if subset > len(result.data.test_x):
            raise UsageError(f"--subset {subset} is larger than the {len(result.data.test_x)} held-out points")
        pyro.set_rng_seed(seed)
        row, _ = decompose(result.model, result.guide, result.data.test_x[:subset], nuts=nuts, seed=seed, **options)
        rows.append(row)
        dataset = result.data.name
    report = format_families(rows, dataset)
    write_text(out / "families.md", report)
    write_json(out / "families.json", {"families": rows})
    save_gap_bars(out / "gaps.png", rows)
    log(report)
    return rows
