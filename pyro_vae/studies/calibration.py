"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) of every
inference method on a trained model's own generative process.

For i = 1..N: (z_i, x_i) ~ p(z) p(x | z), one run of the model's program with its observed sites
unconditioned (``poutine.uncondition``), so every latent site of the program is drawn, its global
sites (a Bayesian decoder's weights) at the run's plug-in values; then L draws of the method's
p(z | x_i) and the rank of each coordinate of the truth among them, in the flat unconstrained space
of ``density.Layout`` (constrained sites through ``biject_to``: a monotone map per coordinate, so a
rank is the same before and after it for scalar sites). If the method's posterior is the exact one,
z_i is one more draw of it and every rank is uniform on {0..L}; ``rank_statistics`` reads off how far
from that each method is. Discrete latent sites are drawn too, and left out of the ranks: the
continuous ones are then ranked against draws of their marginal posterior.

The methods (``METHODS``): ``exact`` (a model with ``exact_posterior``: ``linear_gaussian``),
``amortized`` (the run's encoder q(z | x)), ``semi_amortized`` (the encoder's q refined by Adam steps
up each point's ELBO, as ``compare`` does), ``meanfield``, ``full_rank`` and ``flow`` (the per-point
optimum q* of each family, ``infer.local_families``) and ``nuts`` (``infer.mcmc.sampling``), whose
draws are thinned per point by n / ESS so that the L kept are near-independent; or any callable
x -> posterior with ``sample``.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as pyro_poutine
import torch

from pyro_vae.guides.semi_amortized import SemiAmortizedGuide
from pyro_vae.infer.local_families import fit_family_posterior
from pyro_vae.infer.mcmc.sampling import sample_latents
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.plumbing.files import write_json, write_text
from pyro_vae.program.density import DATA_PLATE, layout_of, plug_in_values
from pyro_vae.program.posteriors import guide_posterior
from pyro_vae.runs.rundir import load_run
from pyro_vae.studies.posterior_comparison import REFINE_LR, REFINE_PARTICLES  # compare's semi_amortized row
from pyro_vae.studies.rank_statistics import (bins_for, format_calibration, save_calibration_figure,
                                              summarize)

METHODS = ("exact", "amortized", "semi_amortized", "meanfield", "full_rank", "flow", "nuts")
FAMILY = {"meanfield": "ffg", "full_rank": "full_rank", "flow": "flow"}
MIN_DRAWS = 39  # L + 1 >= 40: the 2.5% tails of the 95% interval hold at least one rank value each
SUMMARY_DRAWS = 1000  # draws behind the Gaussian an encoder without closed-form moments is refined from


@dataclass
class CalibrationSettings:
    """N ``simulations``, L posterior ``draws`` per simulation, the ``seed`` of the simulations (the
    same simulated data for every method at one seed), the semi-amortized ``refine_steps``, and NUTS's
    chains, warm-up and draws per chain before thinning."""

    simulations: int = 200
    draws: int = 99
    seed: int = 0
    refine_steps: int = 20
    nuts_chains: int = 2
    nuts_warmup: int = 200
    nuts_samples: int = 200

    def validate(self):
        if self.draws < MIN_DRAWS:
            raise UsageError(f"draws = {self.draws} (--sbc-draws): too few posterior draws for the ranks; give at "
                             f"least {MIN_DRAWS}, so that the 95% interval's tails hold a rank value each")
        if not bins_for(self.draws, 10**9):
            raise UsageError(f"draws = {self.draws} (--sbc-draws): its {self.draws + 1} rank values cannot be split "
                             f"into 2 to 20 equal bins; choose L with L + 1 a multiple of such a number (99, 199)")
        if not bins_for(self.draws, self.simulations):
            raise UsageError(f"simulations = {self.simulations} (--sbc-simulations): too few to test {self.draws + 1} "
                             f"rank values for uniformity; give at least 5 per rank bin (100 for 20 bins)")
        if self.refine_steps < 0:
            raise UsageError(f"refine_steps = {self.refine_steps}: the semi-amortized refinement takes 0 or more steps")
        if self.nuts_chains * self.nuts_samples < self.draws:
            raise UsageError(f"NUTS keeps {self.nuts_chains} x {self.nuts_samples} draws, fewer than the "
                             f"{self.draws} each rank needs: raise --sbc-nuts-samples")


def unpack(run_or_model):
    """(model, guide or None, data or None) of a run directory, a loaded run, a fit's result or a model."""
    if isinstance(run_or_model, (str, Path)):
        run_or_model = load_run(run_or_model)
    if isinstance(run_or_model, torch.nn.Module):
        return run_or_model, None, None
    return run_or_model.model, run_or_model.guide, run_or_model.data


def simulate(model, rows, fixed):
    """One run of the program on ``rows`` with its observed sites drawn: (the rows made of the drawn
    observations, the truths u (N, D) flat unconstrained, the discrete latent sites' names)."""
    layout = layout_of(model, rows, fixed)
    latent = {*layout.names, *layout.discrete}
    with torch.no_grad(), pyro.validation_enabled(False):
        trace = pyro_poutine.trace(pyro_poutine.uncondition(pyro_poutine.condition(model, data=fixed))).get_trace(rows)
    observed = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name not in latent
                and name not in fixed and any(f.name == DATA_PLATE for f in site["cond_indep_stack"])]
    if len(observed) != 1 or trace.nodes[observed[0]]["value"].shape != rows.shape:
        raise UsageError(f"model {model.name}: its observed sites {', '.join(observed)} are not its data rows "
                         f"{tuple(rows.shape[1:])}, so simulated data cannot be handed back to it")
    truth = layout.flatten({name: trace.nodes[name]["value"] for name in layout.names})
    return trace.nodes[observed[0]]["value"].to(rows.dtype), truth, list(layout.discrete)


def as_draws(posterior, count, layout, name):
    """``count`` draws of ``posterior`` (over the model's sites, or over u) as u: (count, N, D)."""
    if not hasattr(posterior, "sample"):
        raise UsageError(f"method {name}: its posterior {type(posterior).__name__} cannot be sampled, so it has no "
                         f"ranks; give a posterior with a sample method")
    with torch.no_grad():
        values = posterior.sample((count,))
    return layout.flatten(values) if isinstance(values, dict) or not layout.is_identity() else values


def encoder_posterior(guide, x, fixed, name):
    if guide is None or not getattr(guide, "amortized", False):
        kind = "no guide" if guide is None else f"the guide {type(guide).__name__}, which infers only its training points"
        raise UsageError(f"method {name} needs an amortized encoder that can draw q(z | x) for new x; this run has "
                         f"{kind}")
    with torch.no_grad():
        return guide_posterior(guide, x, fixed=fixed)


def diagonal_gaussian(q, layout):
    """q's diagonal Gaussian over u: itself when it is one, else moment-matched to its draws."""
    if isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal) and layout.is_identity():
        return q
    u = as_draws(q, SUMMARY_DRAWS, layout, "semi_amortized")
    return dist.Normal(u.mean(0), u.std(0)).to_event(1)


def nuts_draws(model, x, layout, settings, init, fixed):
    """L draws of u per point from NUTS's n = chains x samples (chains pooled one after the other),
    every (n // L)-th: near-independent where that stride is at least n / ESS, i.e. where the ESS (the
    least of bulk and tail ESS over the point's coordinates) is about L or more (Talts et al. 2018,
    section 5.1, thin by n / ESS); the note counts the points where it is not."""
    chains, samples, count = settings.nuts_chains, settings.nuts_samples, settings.draws
    draws, _, _ = sample_latents(model, x, chains=chains, warmup=settings.nuts_warmup, samples=samples, init=init,
                                 seed=settings.seed, fixed=fixed)
    n, stride = chains * samples, chains * samples // count
    flat = az.convert_to_dataset(draws.reshape(chains, samples, -1).cpu().numpy())
    ess = np.minimum(*(az.ess(flat, method=kind)["x"].values for kind in ("bulk", "tail")))
    ess = ess.reshape(len(x), layout.dim).min(1)
    short = int((np.ceil(n / ess) > stride).sum())
    kept = draws.reshape(n, len(x), layout.dim)[: stride * count: stride]
    note = (f"{chains} chains x ({settings.nuts_warmup} warm-up + {samples}) draws, one in {stride} kept; "
            f"least ESS {ess.min():.0f}, median {np.median(ess):.0f}")
    if short:
        note += f"; {short} of {len(x)} points have ESS < n / {stride}, their kept draws correlated"
    return kept, note


def method_draws(method, model, guide, x, layout, settings, fixed):
    """(L draws of u (L, N, D) of ``method``'s posterior for the rows ``x``, notes)."""
    count = settings.draws
    if callable(method):
        return as_draws(method(x), count, layout, method_name(method)), []
    if method == "exact":
        if not hasattr(model, "exact_posterior"):
            raise UsageError(f"method exact: model {model.name} has no closed-form posterior (exact_posterior)")
        with torch.no_grad():
            return as_draws(model.exact_posterior(x), count, layout, method), []
    if method == "amortized":
        return as_draws(encoder_posterior(guide, x, fixed, method), count, layout, method), []
    if method == "semi_amortized":
        q0 = diagonal_gaussian(encoder_posterior(guide, x, fixed, method), layout)
        q = SemiAmortizedGuide.refine(model, x, q0, steps=settings.refine_steps, lr=REFINE_LR,
                                      particles=REFINE_PARTICLES, fixed=fixed)
        return q.sample((count,)), [f"{settings.refine_steps} Adam steps at lr {REFINE_LR}, {REFINE_PARTICLES} draws"]
    init = None
    if guide is not None and getattr(guide, "amortized", False) and layout.is_identity():
        q = encoder_posterior(guide, x, fixed, method)
        init = q if isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal) else None
    if method in FAMILY:
        q, steps = fit_family_posterior(model, x, FAMILY[method], init=init, fixed=fixed)
        return q.sample((count,)), [f"q* after {steps} Adam steps" + (" from the encoder's q" if init else "")]
    if method == "nuts":
        kept, note = nuts_draws(model, x, layout, settings, init, fixed)
        return kept, [note]
    raise UsageError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")


def template_rows(model, data, count):
    """Rows the program runs on (inputs a conditional model reads beside z): the test set's, cycled."""
    if data is None:
        return torch.zeros(count, model.data_dim)
    rows = data.test_x
    return rows[torch.arange(count, device=rows.device) % len(rows)]


def calibrate(run_or_model, method, settings=None):
    """SBC of ``method`` (a name of ``METHODS`` or a callable x -> posterior) on the model of
    ``run_or_model`` (a run directory, a loaded run, a fit's result or a bare model), returning a
    ``rank_statistics.CalibrationResult``. The same seed gives the same simulations to every method."""
    settings = settings or CalibrationSettings()
    settings.validate()
    if isinstance(method, str) and method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    model, guide, data = unpack(run_or_model)
    if getattr(model, "bayesian_decoder", False) and guide is None:
        raise UsageError("a Bayesian decoder is fixed at its posterior mean, which needs the run's guide: pass the run")
    model.eval()
    if guide is not None:
        guide.eval()
    fixed = plug_in_values(model, guide) if guide is not None else {}
    rows = template_rows(model, data, settings.simulations)
    layout = layout_of(model, rows, fixed)
    if layout.dim == 0:
        raise UsageError(f"model {model.name} has no continuous latent to rank (its discrete ones are summed out)")
    pyro.set_rng_seed(settings.seed)
    x, truth, discrete = simulate(model, rows, fixed)
    start = time.perf_counter()
    draws, notes = method_draws(method, model, guide, x, layout, settings, fixed)
    seconds = time.perf_counter() - start
    if discrete:
        notes.append(f"discrete sites {', '.join(discrete)} drawn and left out of the ranks")
    return summarize(method_name(method), truth, draws, coordinate_names(layout), seconds, notes)


def method_name(method):
    """A method's name for the table: its own, or a callable's ``__name__`` (``custom`` for a lambda)."""
    if isinstance(method, str):
        return method
    name = getattr(method, "__name__", "custom")
    return "custom" if name.startswith("<") else name


def coordinate_names(layout):
    return [f"{site.name}[{i}]" if site.size > 1 or site.shape else site.name
            for site in layout.continuous for i in range(site.size)]


def add_calibration_arguments(parser):
    """The flags of SBC, as a group of ``parser``."""
    from pyro_vae.plumbing.cli import nonnegative_int, positive_int

    group = parser.add_argument_group("--calibrate (simulation-based calibration, docs/calibration.md)")
    group.add_argument("--calibrate", metavar="M[,M...]",
                       help=f"calibrate these inference methods by SBC on the model's own simulations: "
                            f"{', '.join(METHODS)}, or all (default: none)")
    defaults = CalibrationSettings()
    group.add_argument("--sbc-simulations", type=positive_int, default=defaults.simulations, metavar="N",
                       help="simulated (z, x) per method (default %(default)s)")
    group.add_argument("--sbc-draws", type=positive_int, default=defaults.draws, metavar="L",
                       help="posterior draws each truth is ranked among (default %(default)s)")
    group.add_argument("--sbc-nuts-warmup", type=nonnegative_int, default=defaults.nuts_warmup,
                       help="NUTS warm-up steps per chain for SBC (default %(default)s)")
    group.add_argument("--sbc-nuts-samples", type=positive_int, default=defaults.nuts_samples,
                       help="NUTS draws per chain before thinning for SBC (default %(default)s)")
    return group


def calibration_methods(text):
    """--calibrate's names as a tuple (``all``: every method); UsageError for an unknown one."""
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    if names == ("all",):
        return METHODS
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise UsageError(f"--calibrate {text}: unknown method {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(METHODS)} or all")
    return names


SBC_FLAGS = ("calibrate", "sbc_simulations", "sbc_draws", "sbc_nuts_warmup", "sbc_nuts_samples")


def settings_from_args(args):
    """The :class:`CalibrationSettings` of a command's parsed flags (its ``--seed`` and ``--refine-steps`` too)."""
    return CalibrationSettings(simulations=args.sbc_simulations, draws=args.sbc_draws, seed=getattr(args, "seed", 0),
                               refine_steps=getattr(args, "refine_steps", CalibrationSettings.refine_steps),
                               nuts_warmup=args.sbc_nuts_warmup, nuts_samples=args.sbc_nuts_samples)


def requested(methods):
    """``--calibrate``'s methods as a tuple: a comma-separated string (the command line) or names."""
    return calibration_methods(methods) if isinstance(methods, str) else tuple(methods or ())


def calibration_section(run_or_model, methods, settings, out):
    """``--calibrate`` of ``evaluate`` and ``compare``: :func:`calibrate_methods` on ``methods`` with the
    files written into ``out`` (None: none); returns (what the command's JSON keeps, the table it prints)."""
    results = calibrate_methods(run_or_model, methods, settings, out=out, log=lambda *_: None)
    return [result.as_dict() for result in results], format_calibration(results)


def calibrate_methods(run_or_model, methods, settings=None, out=None, log=print):
    """SBC of each of ``methods`` on the same simulations; with ``out``, writes ``calibration.md`` (also
    logged), ``calibration.json`` and ``calibration.png`` there. Returns the results."""
    settings = settings or CalibrationSettings()
    results = [calibrate(run_or_model, method, settings) for method in methods]
    report = format_calibration(results)
    log(report)
    if out is not None:
        out = Path(out)
        write_text(out / "calibration.md", report)
        write_json(out / "calibration.json", {"settings": vars(settings), "methods": [r.as_dict() for r in results]})
        save_calibration_figure(out / "calibration.png", results)
    return results
