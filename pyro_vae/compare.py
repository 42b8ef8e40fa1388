"""Compare inference methods on one model: ``python -m pyro_vae.compare``.

    python -m pyro_vae.compare [--dataset digits] [--run RUN_DIR] [--subset 100] [--out DIR]
    python -m pyro_vae.compare --fit-from-scratch [--dataset digits] [--passes 20]

1. Trains the model with the amortized guide (or takes ``--run RUN_DIR``).
2. For the first ``--subset`` held-out points infers p(z | x) with the
   encoder, the encoder refined by ``--refine-steps`` steps
   (semi-amortized), a per-point mean-field q* and NUTS, and scores them
   (``pyro_vae.studies.posterior_comparison``): ELBO, log p(x), errors against NUTS, cost,
   and the gaps of Cremer, Li & Duvenaud (2018).
3. Writes ``report.md`` (also printed), ``report.json``, the figures
   ``ellipses.png`` (2-D latents), ``forest.png``, ``reconstructions.png``
   and the posteriors as ArviZ InferenceData (``amortized.nc``,
   ``semi_amortized.nc``, ``meanfield.nc``, ``nuts.nc``).

``--fit-from-scratch`` instead learns the decoder with each method and
compares held-out log p(x) against wall time (``pyro_vae.studies.scratch``).
"""

import argparse
import time

import torch

from pyro_vae.runs import figures as plots
from pyro_vae.runs.assembly import resolve_device
from pyro_vae.plumbing.checkpoint import CheckpointError
from pyro_vae.plumbing.files import atomic_path, write_json, write_text
from pyro_vae.plumbing.cli import (ArgumentParser, UsageError, exit_with, import_user_modules, int_list, names_in, positive_float,
                          positive_int, report_out_of_memory)
from pyro_vae.studies.posterior_comparison import (METHODS, compare_posteriors, format_report, gaussian_summary,
                                           posterior_idata)
from pyro_vae.runs.config import EvaluationSettings, FitConfig, MCMCSettings, add_mixture_arguments
from pyro_vae.data import DATASETS, DataError
from pyro_vae.program.density import layout_of, observation, plug_in_values
from pyro_vae.studies.discrete_comparison import compare_discrete, format_discrete_report, is_discrete_run
from pyro_vae.runs.rundir import load_run, prepare_out
from pyro_vae.studies.scratch import OBJECTIVES, ScratchSettings, fit_from_scratch
from pyro_vae.runs.fit_svi import fit_svi
from pyro_vae.studies.family_gaps import compare_families, parse_families
from pyro_vae.nn.flows import FLOW_LAYERS, FLOWS

ELLIPSE_POINTS = 6


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", metavar="RUN_DIR", help="an amortized run whose decoder and encoder to use (default: train one)")
    p.add_argument("--dataset", choices=sorted(DATASETS), metavar="NAME", help="dataset (default digits, or --run's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's files")
    p.add_argument("--model", help="generative model when training (default: the dataset's)")
    p.add_argument("--latent-dim", type=positive_int,
                   help="latent dimension when training (default 2; 3 with --fit-from-scratch)")
    add_mixture_arguments(p)
    p.add_argument("--epochs", type=positive_int, default=100, help="epochs when training (default %(default)s)")
    p.add_argument("--subset", type=positive_int, default=100,
                   help="held-out points to compare on (also the held-out set of --fit-from-scratch) (default %(default)s)")
    p.add_argument("--iwae-samples", type=positive_int, default=1000, metavar="K",
                   help="importance samples per point, the same for all methods (default %(default)s)")
    p.add_argument("--elbo-samples", type=positive_int, default=200, help="draws per point for ELBOs (default %(default)s)")
    p.add_argument("--refine-steps", type=positive_int, default=20, metavar="K",
                   help="Adam steps refining the encoder's q, decoder fixed: the semi_amortized row (default %(default)s)")
    p.add_argument("--ais-steps", type=positive_int, metavar="T",
                   help="log p(x) of the gaps by AIS with T distributions from the NUTS proposal (default: "
                        "importance sampling with that proposal)")
    p.add_argument("--ais-chains", type=positive_int, default=16, metavar="K", help="AIS chains (default %(default)s)")
    p.add_argument("--chains", type=positive_int, default=MCMCSettings.chains, help="NUTS chains (default %(default)s)")
    p.add_argument("--warmup", type=positive_int, default=MCMCSettings.warmup, help="NUTS warm-up steps (default %(default)s)")
    p.add_argument("--samples", type=positive_int, default=MCMCSettings.samples, help="NUTS draws per chain (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="report directory (default runs/compare-<dataset>-<timestamp>)")
    families = p.add_argument_group("--families (the gaps of Cremer et al. per variational family)")
    families.add_argument("--families", metavar="F[,F...]",
                          help="train a model per family (ffg, full_rank, flow) and decompose each one's gaps side by "
                               "side instead (default: the four-method comparison)")
    families.add_argument("--flow", choices=FLOWS, default="iaf", help="the flow family's transforms (default %(default)s)")
    families.add_argument("--flow-layers", type=int, default=FLOW_LAYERS, metavar="N",
                          help="the flow family's transforms after the Gaussian (default %(default)s)")
    scratch = p.add_argument_group("--fit-from-scratch (Kingma & Welling 2013, figure 3)")
    scratch.add_argument("--fit-from-scratch", action="store_true",
                         help="learn the decoder on small data with each method instead; compare held-out log p(x)")
    scratch.add_argument("--num-train", type=positive_int, default=1000, help="training points (default %(default)s)")
    scratch.add_argument("--passes", type=positive_int, default=20, help="passes over the data per method (default %(default)s)")
    scratch.add_argument("--budget", type=positive_float, metavar="SECONDS",
                         help="train each SVI learner for this much wall time instead of --passes")
    scratch.add_argument("--hidden-dims", type=int_list, default=(400,), metavar="H[,H...]",
                         help="hidden layer widths (default 400)")
    scratch.add_argument("--objectives", type=objective_list, default=",".join(OBJECTIVES), metavar="E[,E...]",
                         help="objectives the amortized guide also learns with, each a learner of its own, or none "
                              "(default %(default)s)")
    scratch.add_argument("--particles", type=positive_int, default=ScratchSettings.particles, metavar="K",
                         help="importance samples per point of --objectives iwae, iwae-dreg and rws (default %(default)s)")
    scratch.add_argument("--m-steps", type=positive_int, default=20, help="MCEM decoder steps per pass (default %(default)s)")
    scratch.add_argument("--mcem-warmup", type=positive_int, default=30, help="MCEM NUTS warm-up per pass (default %(default)s)")
    scratch.add_argument("--mcem-samples", type=positive_int, default=10, help="MCEM NUTS draws per pass (default %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that models or guides it registers can be named (repeatable; a "
                        "run's own --import modules are imported again without it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def model_config(args, **settings):
    """The :class:`FitConfig` of a model that compare trains: the data and model flags, then ``settings``."""
    return FitConfig(dataset=args.dataset or "digits", data_dir=args.data_dir, model=args.model,
                     num_components=args.num_components, covariance=args.covariance, categories=args.categories,
                     seed=args.seed, device="cpu", **settings)


def decoder_and_encoder(args, out, log):
    """The run whose decoder is held fixed: ``--run``, or one trained now."""
    if args.run:
        run = load_run(args.run, resolve_device("cpu"))
        if args.dataset and args.dataset != run.config.dataset:
            raise UsageError(f"--run {args.run} was trained on {run.config.dataset}, not --dataset {args.dataset}")
        if not getattr(run.guide, "amortized", False):
            raise UsageError(f"--run {args.run} used --guide {run.config.guide}; the comparison needs an amortized run")
        return run.model, run.guide, run.data, args.run
    config = model_config(args, latent_dim=args.latent_dim or 2, epochs=args.epochs, out=str(out / "amortized-run"),
                          evaluation=EvaluationSettings(iwae_samples=100))
    config.validate()
    result = fit_svi(config, progress=args.progress, log=log)
    return result.model, result.guide, result.data, config.out


def save_outputs(out, results, posteriors, draws, nuts_idata, model, x, image_shape, fixed):
    """The posteriors as InferenceData and the figures; notes go into ``results``."""
    idatas = {name: posterior_idata(posteriors[name], x) for name in METHODS if name != "nuts"}
    idatas["nuts"] = nuts_idata
    for name, idata in idatas.items():
        with atomic_path(out / f"{name}.nc") as tmp:
            idata.to_netcdf(str(tmp), engine="h5netcdf")
    layout = layout_of(model, x, fixed)
    summaries = {name: gaussian_summary(posteriors[name], layout) for name in METHODS}
    if layout.is_identity():
        plots.save_forest(out / "forest.png", idatas)
    else:
        results["notes"].append(f"forest.png skipped: the latents are several sites ({', '.join(layout.names)})")
    if layout.dim == 2:
        gaussians = {name: (summaries[name].mean.cpu().numpy(), summaries[name].covariance_matrix.cpu().numpy())
                     for name in ("amortized", "semi_amortized", "meanfield")}
        plots.save_ellipses(out / "ellipses.png", gaussians, draws, min(ELLIPSE_POINTS, len(x)))
    else:
        results["notes"].append(f"ellipses.png skipped: it needs a 2-D latent, this one is {layout.dim}-D")
    if image_shape is not None:
        with torch.no_grad():
            means = {m: summaries[m].mean[:8] for m in METHODS}
            means = {m: u if layout.is_identity() else layout.unflatten(u)[0] for m, u in means.items()}
            rows = [x[:8]] + [observation(model, x[:8], means[m], fixed).mean for m in METHODS]
        plots.save_image_grid(out / "reconstructions.png", torch.cat(rows), image_shape, nrow=len(rows[0]))
        results["notes"].append("reconstructions.png rows: data, then the decoder mean at the posterior mean of "
                                + ", ".join(METHODS))


def run_families(args, out, log):
    """``--families``: each family's model trained with the same settings, its gaps decomposed."""
    families = parse_families(args.families)
    if args.run:
        raise UsageError("--families trains a model per family; it takes no --run")
    base = model_config(args, latent_dim=args.latent_dim or 2, hidden_dims=args.hidden_dims, epochs=args.epochs,
                        flow=args.flow, flow_layers=args.flow_layers, evaluation=EvaluationSettings(iwae_samples=100))
    base.validate()
    rows = compare_families(base, families, out, subset=args.subset, nuts=(args.chains, args.warmup, args.samples),
                            seed=args.seed, progress=args.progress, log=log, elbo_samples=args.elbo_samples,
                            iwae_samples=args.iwae_samples, ais_steps=args.ais_steps, ais_chains=args.ais_chains)
    log(f"wrote {out}")
    return rows, out


def objective_list(text):
    """--objectives: a comma-separated list of pyro_vae.studies.scratch.OBJECTIVES, or "none"."""
    if isinstance(text, tuple):
        return text
    if text == "none":
        return ()
    names, unknown = names_in(text, OBJECTIVES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown objective(s) {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(OBJECTIVES)} or none")
    return names


def run_compare(args, log=print):
    import_user_modules(args.imports)
    out = prepare_out(args.out or f"runs/compare-{args.dataset or 'digits'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.fit_from_scratch:
        config = model_config(args, latent_dim=args.latent_dim or 3, hidden_dims=args.hidden_dims,
                              num_train=args.num_train)
        settings = ScratchSettings(passes=args.passes, budget=args.budget, subset=args.subset,
                                   iwae_samples=args.iwae_samples, m_steps=args.m_steps,
                                   mcem_warmup=args.mcem_warmup, mcem_samples=args.mcem_samples,
                                   objectives=objective_list(args.objectives), particles=args.particles)
        return fit_from_scratch(config, settings, out, log)
    if args.families is not None:
        return run_families(args, out, log)
    model, guide, data, run = decoder_and_encoder(args, out, log)
    model.eval()
    guide.eval()
    if args.subset > len(data.test_x):
        raise UsageError(f"--subset {args.subset} is larger than the {len(data.test_x)} held-out points")
    x = data.test_x[: args.subset]
    fixed = plug_in_values(model, guide)
    if is_discrete_run(model):  # one-hot latents: proposals and the exact sum, no NUTS
        results = compare_discrete(model, guide, x, iwae_samples=args.iwae_samples, elbo_samples=args.elbo_samples,
                                   seed=args.seed, fixed=fixed)
        report = format_discrete_report(results, data.name, run)
        write_text(out / "report.md", report)
        write_json(out / "report.json", results)
        log(report)
        return results, out
    log(f"comparing encoder, mean-field and NUTS posteriors on {len(x)} held-out points")
    results, posteriors, draws, nuts_idata = compare_posteriors(
        model, guide, x, iwae_samples=args.iwae_samples, elbo_samples=args.elbo_samples, chains=args.chains,
        warmup=args.warmup, samples=args.samples, seed=args.seed, progress=args.progress, fixed=fixed,
        refine_steps=args.refine_steps, ais_steps=args.ais_steps, ais_chains=args.ais_chains)
    results.update(dataset=data.name, run=str(run), latent_dim=layout_of(model, x).dim, notes=[])
    save_outputs(out, results, posteriors, draws, nuts_idata, model, x, data.image_shape, fixed)
    report = format_report(results, data.name, run)
    write_text(out / "report.md", report)
    write_json(out / "report.json", results)
    log(report)
    log(f"wrote {out}")
    return results, out


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        with report_out_of_memory("compare"):
            run_compare(args)
    except (UsageError, DataError, CheckpointError) as error:
        exit_with("compare", error)


if __name__ == "__main__":
    main()
