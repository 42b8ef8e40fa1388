"""Compare inference methods on one model: ``compare(run, CompareSettings(...))``, what
``python -m pyro_vae.compare`` does.

1. Trains the model with the amortized guide (or takes ``run``).
2. For the first ``subset`` held-out points infers p(z | x) with the
   encoder, the encoder refined by ``refine_steps`` steps
   (semi-amortized), a per-point mean-field q* and NUTS, and scores them
   (``pyro_vae.studies.posterior_comparison``): ELBO, log p(x), errors against NUTS, cost,
   and the gaps of Cremer, Li & Duvenaud (2018) (for one-hot latents, the proposals against the
   exact sum instead: ``pyro_vae.studies.discrete_comparison``).
3. Writes ``report.md``, ``report.json``, the figures ``ellipses.png`` (2-D latents), ``forest.png``,
   ``reconstructions.png`` and the posteriors as ArviZ InferenceData (``amortized.nc``,
   ``semi_amortized.nc``, ``meanfield.nc``, ``nuts.nc``).

``families`` instead trains a model per variational family and decomposes each one's gaps
(``pyro_vae.studies.family_gaps``); ``fit_from_scratch`` learns the decoder with each method and
compares held-out log p(x) against wall time (``pyro_vae.studies.scratch``).
"""

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path

import torch

from pyro_vae.nn.flows import FLOW_LAYERS
from pyro_vae.plumbing.cli import UsageError, import_user_modules
from pyro_vae.plumbing.files import atomic_path, write_json, write_text
from pyro_vae.program.density import layout_of, observation, plug_in_values
from pyro_vae.runs import figures
from pyro_vae.runs.assembly import resolve_device
from pyro_vae.runs.config import EvaluationSettings, FitConfig, MCMCSettings
from pyro_vae.runs.fit_svi import fit_svi
from pyro_vae.runs.rundir import load_run, prepare_out
from pyro_vae.studies.calibration import CalibrationSettings, calibration_section, coordinate_names, requested
from pyro_vae.studies.discrete_comparison import compare_discrete, format_discrete_report, is_discrete_run
from pyro_vae.studies.family_gaps import compare_families, parse_families
from pyro_vae.studies.posterior_comparison import (METHODS, compare_posteriors, format_report, gaussian_summary,
                                                   posterior_idata)
from pyro_vae.studies.scratch import OBJECTIVES, ScratchSettings, fit_from_scratch

ELLIPSE_POINTS = 6


@dataclass
class CompareSettings:
    """The flags of ``python -m pyro_vae.compare`` (``iwae_samples`` is ``--iwae-samples``; its
    ``--help`` says what each means). ``families`` ("ffg,flow" or a tuple of names) or
    ``fit_from_scratch`` pick the other two comparisons; the last group are their settings."""

    dataset: str | None = None
    data_dir: str | None = None
    model: str | None = None
    latent_dim: int | None = None
    num_components: int | None = None
    covariance: str = "diag"
    categories: int | None = None
    epochs: int = 100
    subset: int = 100
    iwae_samples: int = 1000
    elbo_samples: int = 200
    refine_steps: int = 20
    ais_steps: int | None = None
    ais_chains: int = 16
    chains: int = MCMCSettings.chains
    warmup: int = MCMCSettings.warmup
    samples: int = MCMCSettings.samples
    seed: int = 0
    imports: list = field(default_factory=list)
    families: str | tuple | None = None
    flow: str = "iaf"
    flow_layers: int = FLOW_LAYERS
    fit_from_scratch: bool = False
    num_train: int = 1000
    passes: int = ScratchSettings.passes
    budget: float | None = None
    hidden_dims: tuple = (400,)
    objectives: tuple = OBJECTIVES
    particles: int = ScratchSettings.particles
    m_steps: int = ScratchSettings.m_steps
    mcem_warmup: int = ScratchSettings.mcem_warmup
    mcem_samples: int = ScratchSettings.mcem_samples
    calibrate: tuple | str = ()  # SBC of these methods beside the gaps (studies.calibration.METHODS)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)


@dataclass
class Comparison:
    """What ``compare`` returns: ``numbers`` (what ``report.json`` holds; ``families.json`` for
    ``families``), ``report`` (the markdown it printed and wrote) and ``out``, the folder written. The
    four-method comparison also keeps, per method: ``posteriors`` (q(z | x) for the points),
    ``idata`` (ArviZ InferenceData, the ``.nc`` files) and ``gaussians`` (the Gaussian summaries the
    figures draw)."""

    numbers: dict
    report: str
    out: Path
    posteriors: dict | None = None
    idata: dict | None = None
    gaussians: dict | None = None

    def __getitem__(self, key):
        return self.numbers[key]


def model_config(settings, **more):
    """The :class:`FitConfig` of a model that compare trains: the data and model settings, then ``more``."""
    return FitConfig(dataset=settings.dataset or "digits", data_dir=settings.data_dir, model=settings.model,
                     num_components=settings.num_components, covariance=settings.covariance,
                     categories=settings.categories, seed=settings.seed, device="cpu", **more)


def loaded_run(run, settings):
    """The run whose decoder and encoder are held fixed (a directory or a run in memory) and how the
    report names it; checked before anything is written: an amortized guide, a latent to compare."""
    named = str(run) if isinstance(run, (str, Path)) else str(getattr(run, "out", None) or run.config.out)
    if isinstance(run, (str, Path)):
        run = load_run(run, resolve_device("cpu"))
    if settings.dataset and settings.dataset != run.config.dataset:
        raise UsageError(f"--run {named} was trained on {run.config.dataset}, not --dataset {settings.dataset}")
    if not getattr(run.guide, "amortized", False):
        raise UsageError(f"--run {named} used --guide {run.config.guide}; the comparison needs an amortized run")
    if not is_discrete_run(run.model) and layout_of(run.model, run.data.test_x[:2]).dim == 0:
        raise UsageError(f"model {run.model.name} has no continuous latent for NUTS, mean-field or refinement to "
                         f"infer; its discrete latents are summed exactly (python -m pyro_vae.evaluate {named})")
    return run.model, run.guide, run.data, named


def trained_run(settings, out, progress, log):
    """An amortized run of ``settings``' model trained now, into ``out``/amortized-run."""
    config = model_config(settings, latent_dim=settings.latent_dim or 2, epochs=settings.epochs,
                          out=str(out / "amortized-run"), evaluation=EvaluationSettings(iwae_samples=100))
    config.validate()
    result = fit_svi(config, progress=progress, log=log)
    return result.model, result.guide, result.data, config.out


def save_outputs(out, results, posteriors, draws, nuts_idata, model, x, image_shape, fixed):
    """The posteriors as InferenceData and the figures; notes go into ``results``. Returns the
    InferenceData and the Gaussian summaries, per method."""
    idatas = {name: posterior_idata(posteriors[name], x) for name in METHODS if name != "nuts"}
    idatas["nuts"] = nuts_idata
    for name, idata in idatas.items():
        with atomic_path(out / f"{name}.nc") as tmp:
            idata.to_netcdf(str(tmp), engine="h5netcdf")
    layout = layout_of(model, x, fixed)
    summaries = {name: gaussian_summary(posteriors[name], layout) for name in METHODS}
    if layout.is_identity():
        figures.save_forest(out / "forest.png", idatas)
    else:
        results["notes"].append(f"forest.png skipped: the latents are several sites ({', '.join(layout.names)})")
    if layout.dim == 2:
        gaussians = {name: (summaries[name].mean.cpu().numpy(), summaries[name].covariance_matrix.cpu().numpy())
                     for name in ("amortized", "semi_amortized", "meanfield")}
        # the Gaussians live in the flat unconstrained u; named after the model's sites where u is not z
        names = ("z[0]", "z[1]") if layout.is_identity() else tuple(f"u: {n}" for n in coordinate_names(layout))
        figures.save_ellipses(out / "ellipses.png", gaussians, draws, min(ELLIPSE_POINTS, len(x)), names)
    else:
        results["notes"].append(f"ellipses.png skipped: it needs a 2-D latent, this one is {layout.dim}-D")
    if image_shape is not None:
        with torch.no_grad():
            means = {m: summaries[m].mean[:8] for m in METHODS}
            means = {m: u if layout.is_identity() else layout.unflatten(u)[0] for m, u in means.items()}
            rows = [x[:8]] + [observation(model, x[:8], means[m], fixed).mean for m in METHODS]
        figures.save_image_grid(out / "reconstructions.png", torch.cat(rows), image_shape, nrow=len(rows[0]))
        results["notes"].append("reconstructions.png rows: data, then the decoder mean at the posterior mean of "
                                + ", ".join(METHODS))
    else:
        results["notes"].append(f"reconstructions.png skipped: the data ({x.shape[-1]} numbers a row) are not images")
    return idatas, summaries


def families(settings, names, out, progress, log):
    """``families``: each family's model trained with the same settings, its gaps decomposed."""
    base = model_config(settings, latent_dim=settings.latent_dim or 2, hidden_dims=settings.hidden_dims,
                        epochs=settings.epochs, flow=settings.flow, flow_layers=settings.flow_layers,
                        evaluation=EvaluationSettings(iwae_samples=100))
    base.validate()
    rows = compare_families(base, names, out, subset=settings.subset,
                            nuts=(settings.chains, settings.warmup, settings.samples), seed=settings.seed,
                            progress=progress, log=log, elbo_samples=settings.elbo_samples,
                            iwae_samples=settings.iwae_samples, ais_steps=settings.ais_steps,
                            ais_chains=settings.ais_chains)
    log(f"wrote {out}")
    return Comparison({"families": rows}, (out / "families.md").read_text(), out)


def from_scratch(settings, out, log):
    """``fit_from_scratch``: the decoder learnt by each method on ``num_train`` points."""
    config = model_config(settings, latent_dim=settings.latent_dim or 3, hidden_dims=settings.hidden_dims,
                          num_train=settings.num_train)
    scratch = ScratchSettings(passes=settings.passes, budget=settings.budget, subset=settings.subset,
                              iwae_samples=settings.iwae_samples, m_steps=settings.m_steps,
                              mcem_warmup=settings.mcem_warmup, mcem_samples=settings.mcem_samples,
                              objectives=tuple(settings.objectives), particles=settings.particles)
    results, out = fit_from_scratch(config, scratch, out, log)
    return Comparison(results, (out / "report.md").read_text(), out)


def written(out, results, report, log):
    write_text(out / "report.md", report)
    write_json(out / "report.json", results)
    log(report)


def posteriors_compared(model, guide, data, named, settings, out, progress, log):
    """The four-method comparison (or, for one-hot latents, the discrete one) on the first ``subset``
    held-out points."""
    model.eval()
    guide.eval()
    if settings.subset > len(data.test_x):
        raise UsageError(f"--subset {settings.subset} is larger than the {len(data.test_x)} held-out points")
    x = data.test_x[: settings.subset]
    fixed = plug_in_values(model, guide)
    if is_discrete_run(model):  # one-hot latents: proposals and the exact sum, no NUTS
        results = compare_discrete(model, guide, x, iwae_samples=settings.iwae_samples,
                                   elbo_samples=settings.elbo_samples, seed=settings.seed, fixed=fixed)
        report = format_discrete_report(results, data.name, named)
        written(out, results, report, log)
        return Comparison(results, report, out)
    log(f"comparing encoder, mean-field and NUTS posteriors on {len(x)} held-out points")
    results, posteriors, draws, nuts_idata = compare_posteriors(
        model, guide, x, iwae_samples=settings.iwae_samples, elbo_samples=settings.elbo_samples,
        chains=settings.chains, warmup=settings.warmup, samples=settings.samples, seed=settings.seed,
        progress=progress, fixed=fixed, refine_steps=settings.refine_steps, ais_steps=settings.ais_steps,
        ais_chains=settings.ais_chains)
    results.update(dataset=data.name, run=named, latent_dim=layout_of(model, x).dim, notes=[])
    idata, gaussians = save_outputs(out, results, posteriors, draws, nuts_idata, model, x, data.image_shape, fixed)
    report = format_report(results, data.name, named)
    methods = requested(settings.calibrate)
    if methods:  # SBC beside the gaps, on the model's own simulations (studies.calibration)
        results["calibration"], table = calibration_section(SimpleNamespace(model=model, guide=guide, data=data),
                                                            methods, settings.calibration, out)
        report += "\n\n" + table
    written(out, results, report, log)
    log(f"wrote {out}")
    return Comparison(results, report, out, posteriors, idata, gaussians)


def compare(run=None, settings=None, out=None, progress=True, log=print):
    """Compare inference methods on ``run``'s model (a run directory, a run in memory: ``load_run``'s or
    ``fit``'s result, or None: train one by ``settings``), by :class:`CompareSettings` ``settings``;
    write the report into the new folder ``out`` (default ``runs/compare-<dataset>-<timestamp>``).
    Returns a :class:`Comparison`."""
    settings = settings or CompareSettings()
    if requested(settings.calibrate):
        if settings.families is not None or settings.fit_from_scratch:
            raise UsageError("--calibrate goes with the four-method comparison, not --families or --fit-from-scratch")
        settings.calibration.validate()
    if settings.families is not None and run is not None:
        raise UsageError("--families trains a model per family; it takes no --run")
    import_user_modules(settings.imports)
    names = None if settings.families is None else parse_families(
        ",".join(settings.families) if isinstance(settings.families, tuple) else settings.families)
    given = None if run is None or settings.fit_from_scratch else loaded_run(run, settings)  # before any file
    out = prepare_out(out or f"runs/compare-{settings.dataset or 'digits'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if settings.fit_from_scratch:
        return from_scratch(settings, out, log)
    if names is not None:
        return families(settings, names, out, progress, log)
    model, guide, data, named = given or trained_run(settings, out, progress, log)
    return posteriors_compared(model, guide, data, named, settings, out, progress, log)
