"""Learning the decoder from scratch with each inference method (Kingma &
Welling 2013, figure 3): held-out log p(x) against training wall time.

The amortized, mean-field (with its local refinement steps) and
semi-amortized learners, and the amortized guide under each other objective
(IWAE, DReG, reweighted wake-sleep, wake-sleep, score-function; ``--objectives``), run the one SVI loop (``pyro_vae.runs.fit_svi.setup`` and
``train.train_epoch``) with the run's learning rates and batch size, each
for ``--passes`` epochs or, with ``--budget``, for the same wall time;
Monte Carlo EM (on at most 5000 training points) alternates NUTS draws with decoder
steps (``mcmc.monte_carlo_em``; one round counts as one pass). Every
learner is scored by the same importance-sampling estimator and K on the
same held-out points; the proposal is each method's q for new points, its
guide's ``posterior`` (the encoder, or a per-point Gaussian fitted with the
decoder fixed; Monte Carlo EM has no guide and takes the latter). Every
learner uses the run's learning rate (``--lr``). Evaluation time is
excluded from the wall time.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae.runs.assembly import build_model, load_data
from pyro_vae.program.density import layout_of, plug_in_values
from pyro_vae.plumbing.files import write_json, write_text
from pyro_vae.infer.svi.distributed import Cluster
from pyro_vae.program.estimators import log_likelihood, mean_and_se
from pyro_vae.infer.local_fit import fit_local_posterior
from pyro_vae.infer.mcmc.sampling import monte_carlo_em
from pyro_vae.studies.mixture_learners import MIXTURE_LEARNERS, em_curve, has_closed_form
from pyro_vae.objectives import ELBOS
from pyro_vae.runs.figures import save_curves
from pyro_vae.program.posteriors import as_posterior, guide_posterior
from pyro_vae.runs.fit_svi import setup
from pyro_vae.infer.svi.train import train_epoch

SVI_LEARNERS = ("amortized", "meanfield", "semi_amortized")
# The other objectives (``pyro_vae.objectives``) train the amortized guide as learners of their own,
# with ``ScratchSettings.particles`` importance samples per point where they take any.
OBJECTIVES = ("iwae", "iwae-dreg", "rws", "wake-sleep", "score-function")
MCEM_MAX_POINTS = 5000  # Monte Carlo EM samples every training point each round: beyond this it is unaffordable


@dataclass
class ScratchSettings:
    """How long each learner trains and how it is scored: ``passes`` epochs (or MCEM rounds), or
    ``budget`` seconds of training for the SVI learners; log p(x) on the first ``subset`` test points
    with K = ``iwae_samples``; Monte Carlo EM's ``m_steps`` decoder steps and NUTS's ``mcem_warmup`` +
    ``mcem_samples`` iterations per round."""

    passes: int = 20
    budget: float | None = None
    subset: int = 100
    iwae_samples: int = 1000
    m_steps: int = 20
    mcem_warmup: int = 30
    mcem_samples: int = 10
    objectives: tuple = OBJECTIVES
    particles: int = 5


def held_out_score(model, proposal, heldout, iwae_samples, seed):
    pyro.set_rng_seed(seed + 1)
    return mean_and_se(log_likelihood(model, proposal, heldout, iwae_samples))


def svi_curve(config, heldout, passes, every, iwae_samples, log, budget=None):
    """One SVI learner for ``passes`` epochs, or until ``budget`` seconds of
    training when given (the epoch that crosses it is finished), scored every
    ``every`` epochs and at the end."""
    pyro.set_rng_seed(config.seed)
    session = setup(config, Cluster(device_name=config.device))
    model, guide, curve, seconds, epoch = session.model, session.guide, [], 0.0, 0
    name = Path(config.out).name if config.out else config.guide  # the learner's name: its output folder
    while (seconds < budget) if budget else (epoch < passes):
        epoch += 1
        model.train()
        guide.train()
        seconds += train_epoch(session.svi, session.data, config.batch_size, progress=False)[1]
        last = (seconds >= budget) if budget else (epoch == passes)
        if epoch % every and not last:
            continue
        model.eval()
        guide.eval()
        fixed = plug_in_values(model, guide)
        proposal = lambda xb: guide_posterior(guide, xb, fixed=fixed)  # noqa: E731
        ll, se = held_out_score(model, proposal, heldout, iwae_samples, config.seed)
        curve.append({"pass": epoch, "seconds": seconds, "log_likelihood": ll, "log_likelihood_se": se})
        log(f"{name}: pass {epoch}, {seconds:.1f}s, held-out log p(x) {ll:.3f}")
    return curve


def mcem_curve(config, data, heldout, settings, every, log):
    """Monte Carlo EM on the training points for ``settings.passes`` rounds."""
    pyro.set_rng_seed(config.seed)
    model = build_model(config, data)
    x = data.train_batch(torch.arange(data.num_train))
    curve, clock = [], {"seconds": 0.0}

    def track(record):
        clock["seconds"] += record["seconds"]
        if record["iteration"] % every == 0 or record["iteration"] == settings.passes:
            model.eval()
            ll, se = held_out_score(model, lambda xb: as_posterior(fit_local_posterior(model, xb)[0],
                                                                  layout_of(model, xb)), heldout,
                                    settings.iwae_samples, config.seed)
            curve.append({"pass": record["iteration"], "seconds": clock["seconds"], "log_likelihood": ll,
                          "log_likelihood_se": se})
            log(f"mcem: pass {record['iteration']}, {clock['seconds']:.1f}s, held-out log p(x) {ll:.3f}")

    monte_carlo_em(model, x, iterations=settings.passes, warmup=settings.mcem_warmup, samples=settings.mcem_samples,
                   m_steps=settings.m_steps, lr=config.lr, seed=config.seed, log=lambda *a: None,
                   on_iteration=track)
    return curve


def svi_learners(settings):
    """name -> the FitConfig fields of each SVI learner: the three guides under the ELBO, then the
    amortized guide under each of ``settings.objectives`` (score-function with its running-average
    baseline)."""
    learners = {name: {"guide": name} for name in SVI_LEARNERS}
    for elbo in settings.objectives:
        particles = settings.particles if ELBOS[elbo].particles else 1
        baseline = "average" if ELBOS[elbo].baseline else "none"
        name = f"amortized-{elbo}" + (f"-K{particles}" if particles > 1 else "")
        learners[name] = {"guide": "amortized", "elbo": elbo, "particles": particles, "baseline": baseline}
    return learners


def fit_from_scratch(config, settings, out, log=print):
    """Every learner on ``config``'s data; writes ``report.md``,
    ``report.json`` and ``scratch_curve.png`` into ``out``."""
    data = load_data(config, torch.device(config.device))
    heldout = data.test_x[: settings.subset]
    every = max(1, settings.passes // 5)
    curves, notes = {}, []
    mixture = has_closed_form(config, data)  # a tractable posterior (gmm): EM and the mixture's learners
    if mixture:
        curves["em"] = em_curve(config, data, heldout, settings.passes, every, log)
    learners = MIXTURE_LEARNERS if mixture else svi_learners(settings)
    for name, fields in learners.items():
        learner = copy.deepcopy(config)
        for key, value in fields.items():
            setattr(learner, key, value)
        learner.out = str(out / name)
        curves[name] = svi_curve(learner, heldout, settings.passes, every, settings.iwae_samples, log, settings.budget)
    if mixture:
        notes.append("em stops when an iteration gains less than 1e-7 nats per point")
    elif data.num_train <= MCEM_MAX_POINTS:
        curves["mcem"] = mcem_curve(config, data, heldout, settings, every, log)
    else:
        notes.append(f"mcem skipped: NUTS over all {data.num_train} training points each round is unaffordable "
                     f"here (at most {MCEM_MAX_POINTS}; pass --num-train)")
    rows = {name: curve[-1] for name, curve in curves.items()}
    title = f"{data.name}: {data.num_train} training points, latent dim {config.latent_dim}"
    save_curves(out / "scratch_curve.png", curves, title)
    lines = [f"# Learning the decoder from scratch: {title}, {settings.passes} passes", "",
             f"Held-out log p(x) on {len(heldout)} test points, " + ("exact (the assignments summed out)" if mixture else
                                                                  f"importance-weighted with K = {settings.iwae_samples}")
             + " for every method.", "", "| method | held-out log p(x) | passes | training seconds |", "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['log_likelihood']:.3f} ± {row['log_likelihood_se']:.3f} | {row['pass']} | "
                     f"{row['seconds']:.3f} |")
    lines += [f"- {note}" for note in notes]
    report = "\n".join(lines) + "\n"
    results = {"fit_from_scratch": {"curves": curves, "final": rows, "num_train": data.num_train,
                                    "latent_dim": config.latent_dim, "passes": settings.passes, "budget": settings.budget,
                                    "notes": notes}}
    write_text(out / "report.md", report)
    write_json(out / "report.json", results)
    log(report)
    return results, out
