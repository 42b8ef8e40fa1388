"""Contrast three inferences of p(z | x) under one fixed decoder.

    python -m pyro_vae.compare [--dataset digits] [--run RUN_DIR] [--subset 100] [--out DIR]

1. Trains the model with the amortized guide (or takes ``--run RUN_DIR``).
2. For the first ``--subset`` held-out points, infers p(z | x) three ways:
   ``amortized`` (the encoder q(z | x)), ``meanfield`` (a per-point
   factorised Gaussian q*(z) optimised with the decoder fixed, classical VB)
   and ``nuts`` (the reference).
3. Writes ``report.md`` (also printed) and ``report.json``: per method the
   ELBO, the importance-sampled log p(x) with the same K for all, the error
   of posterior means and the ratio of posterior standard deviations against
   NUTS, KL(q || N_nuts) where N_nuts is the Gaussian moment-matched to each
   point's NUTS draws, wall time for the subset and per new point; then the
   gap decomposition of Cremer, Li & Duvenaud (2018): approximation gap =
   log p(x) - L[q*], amortization gap = L[q*] - L[q_encoder], with standard
   errors over points. log p(x) there is the importance-weighted estimate
   with the NUTS proposal, the tightest of the three.
4. Figures: ``ellipses.png`` (NUTS draws with the encoder's and the
   mean-field 2-sigma ellipses, 2-D latents only), ``forest.png`` (ArviZ
   forest plot across methods), ``reconstructions.png`` (data, then the
   decoder's mean at each method's posterior mean).
5. ``amortized.nc``, ``meanfield.nc``, ``nuts.nc``: the three posteriors as
   ArviZ InferenceData (the SVI posteriors as draws from q, via ``az.from_dict``).

For the linear-Gaussian model the report adds an ``exact`` row with the
closed-form log p(x) and posterior, and the exact approximation gap.

ELBOs are estimated with ``--elbo-samples`` draws per point (not one), so the
gaps are not swamped by Monte Carlo noise.
"""

import math
import time

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from pyro_vae import plots
from pyro_vae.checkpoint import CheckpointError, atomic_path, write_json, write_text
from pyro_vae.cli import ArgumentParser, UsageError, exit_with, positive_int
from pyro_vae.data import DATASETS, DataError
from pyro_vae.evaluate import log_joint_terms, log_likelihood, mean_and_se
from pyro_vae.fit import FitConfig, fit, load_run, prepare_out, resolve_device
from pyro_vae.guides.meanfield import fit_local_posterior
from pyro_vae.guides.nuts import moment_matched
from pyro_vae.nuts import diagnose, inference_data, sample_latents

METHODS = ("amortized", "meanfield", "nuts")
ELLIPSE_POINTS = 6


@torch.no_grad()
def elbo_per_point(model, q, x, samples=200):
    """E_q[log p(x, z) - log q(z)] per point, from ``samples`` draws."""
    z = q.sample((samples,))
    log_lik, log_prior = log_joint_terms(model, x, z)
    return (log_lik + log_prior - q.log_prob(z)).mean(0)


def as_full_gaussian(q):
    """A batch of MultivariateNormal with q's means and covariances."""
    if isinstance(q, dist.MultivariateNormal):
        return q
    return dist.MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))


def posterior_idata(q, x, draws=1000):
    """An SVI posterior as InferenceData: ``draws`` samples of q, one chain."""
    z = q.sample((draws,)).unsqueeze(0)
    return az.from_dict(posterior={"z": z.cpu().numpy()}, observed_data={"x": x.cpu().numpy()},
                        dims={"z": ["point", "latent"], "x": ["point", "feature"]})


def compare_posteriors(model, encoder, x, iwae_samples=1000, elbo_samples=200, chains=4, warmup=500, samples=500,
                       seed=0, progress=False):
    """Infer p(z | x) for the rows of ``x`` three ways under the fixed decoder of
    ``model`` and score each. Returns (results dict, posteriors dict, NUTS
    draws, InferenceData of NUTS)."""
    pyro.set_rng_seed(seed)
    posteriors, seconds = {}, {}
    start = time.perf_counter()
    with torch.no_grad():
        posteriors["amortized"] = encoder.posterior(x)
    seconds["amortized"] = time.perf_counter() - start
    start = time.perf_counter()
    posteriors["meanfield"], meanfield_steps = fit_local_posterior(model, x)
    seconds["meanfield"] = time.perf_counter() - start
    draws, stats, seconds["nuts"] = sample_latents(model, x, chains, warmup, samples, posteriors["amortized"], seed,
                                                  progress=progress)
    posteriors["nuts"] = moment_matched(draws)
    nuts_idata = inference_data(draws, stats, x)
    _, nuts_figures, nuts_warnings = diagnose(nuts_idata, chains)

    reference = posteriors["nuts"]
    nuts_sd = reference.variance.sqrt()
    per_point = {}
    results = {"num_points": len(x), "iwae_samples": iwae_samples, "elbo_samples": elbo_samples}
    for name in METHODS:
        q = posteriors[name]
        elbo = elbo_per_point(model, q, x, elbo_samples)
        ll = log_likelihood(model, lambda _: q, x, iwae_samples, batch_size=len(x))
        kl = torch.distributions.kl_divergence(as_full_gaussian(q), reference)
        per_point[name] = {"elbo": elbo, "log_likelihood": ll}
        results[name] = {
            "elbo": mean_and_se(elbo)[0], "elbo_se": mean_and_se(elbo)[1],
            "log_likelihood": mean_and_se(ll)[0], "log_likelihood_se": mean_and_se(ll)[1],
            "mean_error": float((q.mean - reference.mean).pow(2).sum(-1).sqrt().mean()),
            "sd_ratio": float((q.variance.sqrt() / nuts_sd).mean()),
            "kl_to_nuts": float(kl.mean()),
            "seconds": seconds[name],
            "seconds_per_point": seconds[name] / len(x),
        }
    results["meanfield"]["steps"] = meanfield_steps
    results["nuts"].update(nuts_figures, warnings=nuts_warnings, chains=chains, warmup=warmup, samples=samples,
                           converged=not nuts_warnings or all("effective sample" in w for w in nuts_warnings))
    results["nuts"]["elbo_note"] = "ELBO of the Gaussian moment-matched to the draws"

    # Cremer, Li & Duvenaud (2018): gaps per point, then mean and s.e.
    log_px = per_point["nuts"]["log_likelihood"]
    approximation = log_px - per_point["meanfield"]["elbo"]
    amortization = per_point["meanfield"]["elbo"] - per_point["amortized"]["elbo"]
    results["approximation_gap"], results["approximation_gap_se"] = mean_and_se(approximation)
    results["amortization_gap"], results["amortization_gap_se"] = mean_and_se(amortization)
    results["log_likelihood_for_gaps"] = "importance-weighted, NUTS proposal"

    if hasattr(model, "exact_posterior"):
        with torch.no_grad():
            exact = model.exact_posterior(x)
            exact_ll = model.log_marginal(x)
        results["exact"] = {
            "log_likelihood": mean_and_se(exact_ll)[0], "log_likelihood_se": mean_and_se(exact_ll)[1],
            "mean_error": float((exact.mean - reference.mean).pow(2).sum(-1).sqrt().mean()),
            "sd_ratio": float((exact.variance.sqrt() / nuts_sd).mean()),
            "kl_to_nuts": float(torch.distributions.kl_divergence(exact, reference).mean()),
        }
        exact_gap = exact_ll - per_point["meanfield"]["elbo"]
        results["exact_approximation_gap"], results["exact_approximation_gap_se"] = mean_and_se(exact_gap)
    return results, posteriors, draws, nuts_idata


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
        elbo = f"{r['elbo']:.3f} ± {r['elbo_se']:.3f}" if "elbo" in r else "-"
        seconds = (f"{r['seconds']:.3f}", f"{r['seconds_per_point']:.2e}") if "seconds" in r else ("-", "-")
        label = name
        if name == "nuts" and not r["converged"]:
            label = "nuts ⚠ not converged"
        lines.append(f"| {label} | {elbo} | {r['log_likelihood']:.3f} ± {r['log_likelihood_se']:.3f} | "
                     f"{r['mean_error']:.4f} | {r['sd_ratio']:.3f} | {max(r['kl_to_nuts'], 0.0):.4f} | {seconds[0]} | {seconds[1]} |")
    nuts = results["nuts"]
    r_hat = "n/a (one chain)" if nuts["max_r_hat"] is None else f"{nuts['max_r_hat']:.3f}"
    lines += ["", f"NUTS: {nuts['chains']} chains x ({nuts['warmup']} warm-up + {nuts['samples']} draws), "
                  f"{nuts['divergences']} divergences, max R-hat {r_hat}, min bulk ESS {nuts['min_ess_bulk']:.0f}, "
                  f"min tail ESS {nuts['min_ess_tail']:.0f}. Its ELBO is that of the moment-matched Gaussian."]
    for warning in nuts["warnings"]:
        lines.append(f"- warning: {warning}")
    lines += ["", "## Gaps (Cremer, Li & Duvenaud 2018), nats per point", "",
              f"- approximation gap log p(x) - L[q*] = {results['approximation_gap']:.3f} ± "
              f"{results['approximation_gap_se']:.3f}",
              f"- amortization gap L[q*] - L[q_encoder] = {results['amortization_gap']:.3f} ± "
              f"{results['amortization_gap_se']:.3f}"]
    if "exact_approximation_gap" in results:
        lines.append(f"- exact approximation gap (closed-form log p(x)) = {results['exact_approximation_gap']:.3f} ± "
                     f"{results['exact_approximation_gap_se']:.3f}")
    lines += ["", f"Per new point: the encoder takes {results['amortized']['seconds_per_point']:.2e} s, the mean-field "
                  f"fit {results['meanfield']['seconds_per_point']:.2e} s ({results['meanfield']['steps']} Adam steps), "
                  f"NUTS {results['nuts']['seconds_per_point']:.2e} s: what amortization buys."]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def save_ellipses(path, posteriors, draws, count=ELLIPSE_POINTS):
    """NUTS draws with 2-sigma ellipses of the encoder and mean-field Gaussians."""
    fig = Figure(figsize=(3.2 * count, 3.4))
    flat = draws.reshape(-1, *draws.shape[2:]).cpu().numpy()
    for i in range(count):
        ax = fig.add_subplot(1, count, i + 1)
        ax.scatter(flat[:, i, 0], flat[:, i, 1], s=2, alpha=0.15, color="k", label="NUTS draws")
        for name, color in (("amortized", "tab:blue"), ("meanfield", "tab:orange")):
            q = as_full_gaussian(posteriors[name])
            mean, cov = q.mean[i].cpu().numpy(), q.covariance_matrix[i].cpu().numpy()
            values, vectors = np.linalg.eigh(cov)
            angle = math.degrees(math.atan2(vectors[1, -1], vectors[0, -1]))
            ax.add_patch(Ellipse(mean, 4 * math.sqrt(values[-1]), 4 * math.sqrt(values[0]), angle=angle, fill=False,
                                 color=color, lw=2, label=f"{name} 2σ"))
        ax.set(title=f"point {i}", xlabel="z[0]", ylabel="z[1]" if i == 0 else "")
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def save_forest(path, idatas, points=5):
    """ArviZ forest plot of z for the first few points, one colour per method."""
    names = list(idatas)
    data = [idatas[n].sel(point=slice(0, points - 1)) for n in names]
    axes = az.plot_forest(data, model_names=names, var_names=["z"], combined=True, hdi_prob=0.94,
                          figsize=(7, 1.2 * points * idatas[names[0]].posterior.sizes["latent"] / 2 + 2))
    figure = np.ravel(axes)[0].figure
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)


def fit_from_scratch(args, out, log=print):
    """Kingma & Welling (2013), figure 3: learn the decoder on a small training
    set with the amortized guide, the mean-field guide (variational EM) and
    Monte Carlo EM with NUTS, each for ``--passes`` passes over the data (an
    MCEM round, NUTS over every point then ``--m-steps`` decoder steps, counts
    as one pass), and track the held-out log p(x) (the same importance-
    sampling estimator and K for all; the proposal is each method's q for
    new points: the encoder, or a per-point Gaussian fitted with the decoder
    fixed) against training wall time (evaluation time excluded)."""
    from pyro_vae.fit import build, load_data
    from pyro_vae.nuts import monte_carlo_em
    from pyro_vae.train import make_svi, train_epoch

    args.latent_dim = args.latent_dim or 3
    config = FitConfig(dataset=args.dataset or "digits", data_dir=args.data_dir, model=args.model,
                       latent_dim=args.latent_dim, num_train=args.num_train, seed=args.seed, device="cpu")
    data = load_data(config, torch.device("cpu"))
    heldout = data.test_x[: args.subset]
    every = max(1, args.passes // 5)
    curves, rows = {}, {}

    def score(model, proposal):
        pyro.set_rng_seed(args.seed + 1)
        return mean_and_se(log_likelihood(model, proposal, heldout, args.iwae_samples))

    def fixed_decoder_proposal(model):
        return lambda xb: fit_local_posterior(model, xb)[0]

    for guide_name in ("amortized", "meanfield"):
        pyro.set_rng_seed(args.seed)
        config.guide = guide_name
        model, guide = build(config, data)
        svi = make_svi(model, guide, 1e-3, local_lr=1e-2)
        seconds, curve = 0.0, []
        for epoch in range(1, args.passes + 1):
            model.train()
            seconds += train_epoch(svi, data, 100, progress=False)[1]
            if epoch % every == 0 or epoch == args.passes:
                model.eval()
                proposal = guide.posterior if guide_name == "amortized" else fixed_decoder_proposal(model)
                ll, se = score(model, proposal)
                curve.append({"pass": epoch, "seconds": seconds, "log_likelihood": ll, "log_likelihood_se": se})
                log(f"{guide_name}: pass {epoch}, {seconds:.1f}s, held-out log p(x) {ll:.3f}")
        curves[guide_name] = curve
    pyro.set_rng_seed(args.seed)
    config.guide = "amortized"
    model, _ = build(config, data)
    x = data.train_batch(torch.arange(data.num_train))
    curve, clock = [], {"seconds": 0.0}

    def track(record):
        clock["seconds"] += record["seconds"]
        if record["iteration"] % every == 0 or record["iteration"] == args.passes:
            model.eval()
            ll, se = score(model, fixed_decoder_proposal(model))
            curve.append({"pass": record["iteration"], "seconds": clock["seconds"], "log_likelihood": ll,
                          "log_likelihood_se": se})
            log(f"mcem: pass {record['iteration']}, {clock['seconds']:.1f}s, held-out log p(x) {ll:.3f}")

    monte_carlo_em(model, x, args.passes, args.mcem_warmup, args.mcem_samples, args.m_steps, 1e-2, args.seed,
                   log=lambda *a: None, on_iteration=track)
    curves["mcem"] = curve
    for name, curve in curves.items():
        rows[name] = curve[-1]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot([c["seconds"] for c in curve], [c["log_likelihood"] for c in curve], "o-", label=name)
    ax.set(xscale="log", xlabel="training wall time (s)", ylabel="held-out log p(x) (nats per point)",
           title=f"{data.name}: {data.num_train} training points, latent dim {args.latent_dim}")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_path(out / "scratch_curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    lines = [f"# Learning the decoder from scratch: {data.name}, {data.num_train} training points, "
             f"latent dim {args.latent_dim}, {args.passes} passes", "",
             f"Held-out log p(x) on {len(heldout)} test points, importance-weighted with K = {args.iwae_samples} "
             f"for every method.", "", "| method | held-out log p(x) | training seconds |", "|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['log_likelihood']:.3f} ± {row['log_likelihood_se']:.3f} | {row['seconds']:.1f} |")
    report = "\n".join(lines) + "\n"
    results = {"fit_from_scratch": {"curves": curves, "final": rows, "num_train": data.num_train,
                                    "latent_dim": args.latent_dim, "passes": args.passes}}
    write_text(out / "report.md", report)
    write_json(out / "report.json", results)
    log(report)
    return results, out


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", metavar="RUN_DIR", help="an amortized run whose decoder and encoder to use (default: train one)")
    p.add_argument("--dataset", choices=sorted(DATASETS), metavar="NAME", help="dataset (default digits, or --run's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's files")
    p.add_argument("--model", help="generative model when training (default: the dataset's)")
    p.add_argument("--latent-dim", type=positive_int,
                   help="latent dimension when training (default 2; 3 with --fit-from-scratch)")
    p.add_argument("--epochs", type=positive_int, default=100, help="epochs when training (default %(default)s)")
    p.add_argument("--subset", type=positive_int, default=100,
                   help="held-out points to compare on (also the held-out set of --fit-from-scratch) (default %(default)s)")
    p.add_argument("--iwae-samples", type=positive_int, default=1000, metavar="K",
                   help="importance samples per point, the same for all methods (default %(default)s)")
    p.add_argument("--elbo-samples", type=positive_int, default=200, help="draws per point for ELBOs (default %(default)s)")
    p.add_argument("--chains", type=positive_int, default=4, help="NUTS chains (default %(default)s)")
    p.add_argument("--warmup", type=positive_int, default=500, help="NUTS warm-up steps (default %(default)s)")
    p.add_argument("--samples", type=positive_int, default=500, help="NUTS draws per chain (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="report directory (default runs/compare-<dataset>-<timestamp>)")
    scratch = p.add_argument_group("--fit-from-scratch (Kingma & Welling 2013, figure 3)")
    scratch.add_argument("--fit-from-scratch", action="store_true",
                         help="learn the decoder on small data with each method instead; compare held-out log p(x)")
    scratch.add_argument("--num-train", type=positive_int, default=1000, help="training points (default %(default)s)")
    scratch.add_argument("--passes", type=positive_int, default=20, help="passes over the data per method (default %(default)s)")
    scratch.add_argument("--m-steps", type=positive_int, default=20, help="MCEM decoder steps per pass (default %(default)s)")
    scratch.add_argument("--mcem-warmup", type=positive_int, default=30, help="MCEM NUTS warm-up per pass (default %(default)s)")
    scratch.add_argument("--mcem-samples", type=positive_int, default=10, help="MCEM NUTS draws per pass (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def run_compare(args, log=print):
    device = resolve_device("cpu")
    out = prepare_out(args.out or f"runs/compare-{args.dataset or 'digits'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.fit_from_scratch:
        return fit_from_scratch(args, out, log)
    if args.run:
        model, guide, data, config, _ = load_run(args.run, device)
        if args.dataset and args.dataset != config.dataset:
            raise UsageError(f"--run {args.run} was trained on {config.dataset}, not --dataset {args.dataset}")
        if not getattr(guide, "amortized", False):
            raise UsageError(f"--run {args.run} used --guide {config.guide}; the comparison needs an amortized run")
        run = args.run
    else:
        config = FitConfig(dataset=args.dataset or "digits", data_dir=args.data_dir, model=args.model,
                           latent_dim=args.latent_dim or 2, epochs=args.epochs, seed=args.seed, device="cpu",
                           out=str(out / "amortized-run"), eval_iwae_samples=100)
        result = fit(config, progress=args.progress, log=log)
        model, guide, data, run = result.model, result.guide, result.data, config.out
    model.eval()
    guide.eval()
    if args.subset > len(data.test_x):
        raise UsageError(f"--subset {args.subset} is larger than the {len(data.test_x)} held-out points")
    x = data.test_x[: args.subset]
    log(f"comparing encoder, mean-field and NUTS posteriors on {len(x)} held-out points")
    results, posteriors, draws, nuts_idata = compare_posteriors(
        model, guide, x, args.iwae_samples, args.elbo_samples, args.chains, args.warmup, args.samples, args.seed,
        args.progress)
    results.update(dataset=data.name, run=str(run), latent_dim=model.latent_dim, notes=[])

    idatas = {"amortized": posterior_idata(posteriors["amortized"], x),
              "meanfield": posterior_idata(posteriors["meanfield"], x), "nuts": nuts_idata}
    for name, idata in idatas.items():
        with atomic_path(out / f"{name}.nc") as tmp:
            idata.to_netcdf(str(tmp), engine="h5netcdf")
    save_forest(out / "forest.png", idatas)
    if model.latent_dim == 2:
        save_ellipses(out / "ellipses.png", posteriors, draws, min(ELLIPSE_POINTS, len(x)))
    else:
        results["notes"].append(f"ellipses.png skipped: it needs a 2-D latent, this one is {model.latent_dim}-D")
    if data.image_shape is not None:
        with torch.no_grad():
            rows = [x[:8]] + [model.likelihood(posteriors[m].mean[:8]).mean for m in METHODS]
        plots.save_image_grid(out / "reconstructions.png", torch.cat(rows), data.image_shape, nrow=len(rows[0]))
        results["notes"].append("reconstructions.png rows: data, then the decoder mean at the posterior mean of "
                                "amortized, meanfield, nuts")
    report = format_report(results, data.name, run)
    write_text(out / "report.md", report)
    write_json(out / "report.json", results)
    log(report)
    log(f"wrote {out}")
    return results, out


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        run_compare(args)
    except (UsageError, DataError, CheckpointError) as error:
        exit_with("compare", error)


if __name__ == "__main__":
    main()
