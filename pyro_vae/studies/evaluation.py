"""Evaluate a run: ``evaluate(run, EvaluateSettings(...))``, what ``python -m pyro_vae.evaluate`` does.

Every figure is in nats per example (the estimators are in ``pyro_vae.program.estimators``):

- ``log_likelihood``: the importance-weighted estimate (Burda et al. 2015)
  log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(. | x), per
  example, averaged, with its standard error over examples: a stochastic
  lower bound that tightens to log p(x) as K grows, the run's q(z | x) the proposal;
- ``elbo``, ``reconstruction`` = log p(x | z) and ``kl`` = log q(z | x) -
  log p(z) (one-sample estimates, so elbo = reconstruction - kl);
- ``active_units``: latent dimensions whose variance over x of E_q[z | x]
  exceeds 0.01 (Burda et al. 2015);
- for models with a closed-form marginal (``linear_gaussian``, ``gmm``): ``exact_log_likelihood``; for a
  model whose latents are all discrete (``gmm``) ``log_likelihood`` is that exact sum too;
- with ``estimator="ais"``, beside those: ``ais``, annealed importance
  sampling's log p(x) per example (log-mean-exp over ``ais_chains``
  chains through ``ais_steps`` distributions from the prior, or from the
  run's q(z | x) with ``ais_start="q"``), its mean and standard error over
  examples, acceptance rate and seconds (``pyro_vae.infer.ais``);
- with ``bdmc``: bidirectional Monte Carlo on data simulated from the
  model: the forward-AIS lower bound, the reverse-AIS upper bound and
  their width, which certifies forward AIS for this model and schedule.
"""

from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pyro_vae.infer import ais
from pyro_vae.plumbing.cli import UsageError, import_user_modules
from pyro_vae.plumbing.files import write_json
from pyro_vae.program.density import layout_of, plug_in_values
from pyro_vae.program.estimators import evaluate as estimate
from pyro_vae.program.posteriors import guide_posterior
from pyro_vae.runs.assembly import resolve_device
from pyro_vae.runs.rundir import load_run
from pyro_vae.studies.calibration import CalibrationSettings, calibration_section, requested

SPLITS = ("test", "train")
ESTIMATORS = ("iwae", "ais")
AIS_STARTS = ("prior", "q")


@dataclass
class EvaluateSettings:
    """The flags of ``python -m pyro_vae.evaluate`` (``iwae_samples`` is ``--iwae-samples``; its
    ``--help`` says what each means). ``device`` and ``imports`` apply when the run is read from
    its directory."""

    iwae_samples: int = 5000  # as Burda et al. 2015
    split: str = "test"
    max_examples: int | None = None
    batch_size: int = 100
    estimator: str = "iwae"
    ais_steps: int = ais.DEFAULT_STEPS
    ais_chains: int = ais.DEFAULT_CHAINS
    ais_start: str = "prior"
    bdmc: bool = False
    seed: int = 0
    device: str = "auto"
    imports: list = field(default_factory=list)
    calibrate: tuple | str = ()  # SBC of these methods (studies.calibration.METHODS: "amortized", ...)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)

    def validate(self):
        for name, value, choices in [("split", self.split, SPLITS), ("estimator", self.estimator, ESTIMATORS),
                                     ("ais start", self.ais_start, AIS_STARTS)]:
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        counts = [self.iwae_samples, self.batch_size, self.ais_steps, self.ais_chains, self.max_examples or 1]
        if min(counts) < 1:
            raise UsageError("--iwae-samples, --batch-size, --ais-steps, --ais-chains and --max-examples must be "
                             "positive")


@dataclass
class Evaluation:
    """What ``evaluate`` returns: ``numbers``, every figure of ``eval.json`` (``evaluation["elbo"]``
    reads one), and ``path``, where they were written (None when nothing was)."""

    numbers: dict
    path: Path | None

    def __getitem__(self, key):
        return self.numbers[key]

    def table(self):
        """The table ``python -m pyro_vae.evaluate`` prints."""
        return format_table(self.numbers)


def format_table(results):
    rows = [("log_likelihood", "log p(x), importance-weighted"), ("exact_log_likelihood", "log p(x), exact"),
            ("elbo", "ELBO"), ("reconstruction", "  reconstruction E[log p(x|z)]"), ("kl", "  KL(q || p)")]
    lines = [f"{'':34}{'nats/example':>14}{'s.e.':>10}"]
    for key, label in rows:
        if key in results:
            lines.append(f"{label:34}{results[key]:>14.3f}{results[key + '_se']:>10.3f}")
    lines.append(f"{'log p(x) - ELBO':34}{results['log_likelihood_minus_elbo']:>14.3f}")
    lines.append(f"{'active units':34}{results['active_units']:>14d} of {len(results['latent_variances'])}")
    if "ais" in results:
        a = results["ais"]
        lines.append(f"{'log p(x), AIS':34}{a['log_likelihood']:>14.3f}{a['log_likelihood_se']:>10.3f}"
                     f"   ({a['chains']} chains x {a['steps']} steps from the {a['start']}, "
                     f"acceptance {a['acceptance']:.2f}, {a['seconds']:.0f}s)")
    if "bdmc" in results:
        b = results["bdmc"]
        lines.append(f"{'BDMC on simulated data':34}lower {b['lower']:.3f}, upper {b['upper']:.3f}, width "
                     f"{b['width']:.3f} ({b['points']} points)")
    lines.append(f"({results['num_examples']} examples, K = {results['iwae_samples']} importance samples)")
    if "calibration_table" in results:
        lines += ["", results["calibration_table"]]
    return "\n".join(lines)


def examples_and_proposal(run, split, max_examples):
    """The rows to evaluate, q(z | x) for a batch of them, whether that q is
    looked up by the rows' positions, and the model's global values. An MCMC
    run's posterior exists for the points it sampled only, so it is
    evaluated on those, each by its index."""
    model, guide, data = run.model, run.guide, run.data
    x = data.test_x if split == "test" else data.train_batch(torch.arange(data.num_train, device=data.train_x.device))
    fixed = plug_in_values(model, guide)
    if run.config.inference == "nuts" and guide.split == split:
        x = x[: guide.num_points]
        x = x[:max_examples] if max_examples else x
        return x, (lambda xb, rows: guide.posterior(xb, idx=rows)), True, fixed
    x = x[:max_examples] if max_examples else x
    return x, (lambda xb: guide_posterior(guide, xb, fixed=fixed)), False, fixed


def ais_summary(result, start):
    return {"log_likelihood": result.mean, "log_likelihood_se": result.se, "steps": result.steps,
            "chains": result.chains, "start": start, "acceptance": float(result.acceptance.mean()),
            "seconds": result.seconds, "per_example": result.log_likelihood.tolist()}


def bdmc_summary(run, settings, fixed, progress):
    try:
        result = ais.bdmc(run.model, settings.max_examples or 100,
                          ais.AISOptions(steps=settings.ais_steps, chains=settings.ais_chains),
                          fixed=fixed, seed=settings.seed, progress=progress)
    except ValueError as error:
        raise UsageError(f"--bdmc: {error}") from None
    return {"lower": result.lower, "upper": result.upper, "width": result.width, "points": len(result.x),
            "steps": settings.ais_steps, "chains": settings.ais_chains,
            "seconds": result.forward.seconds + result.reverse.seconds}


def run_and_folder(run, settings, out):
    """A run in memory and the folder its ``eval.json`` goes to: ``out``, else the run's own directory
    (``run`` given as one, or a ``fit`` result's ``out``); None for a loaded run with no ``out``."""
    if isinstance(run, (str, Path)):
        import_user_modules(settings.imports)
        return load_run(run, resolve_device(settings.device)), Path(out or run)
    run.model.eval()
    run.guide.eval()
    folder = out or getattr(run, "out", None)
    return run, None if folder is None else Path(folder)


def evaluate(run, settings=None, out=None, progress=True):
    """Score ``run`` (a run directory, or a run in memory: ``load_run``'s or ``fit``'s result) on its
    ``settings.split`` by :class:`EvaluateSettings` ``settings``; write ``eval.json`` into ``out`` (default:
    the run's directory). Returns an :class:`Evaluation` holding the same figures."""
    settings = settings or EvaluateSettings()
    settings.validate()
    methods = requested(settings.calibrate)
    if methods:
        settings.calibration.validate()
    named = str(run) if isinstance(run, (str, Path)) else None  # as given, as the command writes it
    run, folder = run_and_folder(run, settings, out)
    pyro.set_rng_seed(settings.seed)
    x, proposal, indexed, fixed = examples_and_proposal(run, settings.split, settings.max_examples)
    if (settings.estimator == "ais" or settings.bdmc) and layout_of(run.model, x, fixed).dim == 0:
        raise UsageError(f"--estimator ais and --bdmc anneal continuous latents; model {run.model.name} has none "
                         f"(its log p(x) is importance-sampled, and exact where its discrete latents can be summed)")
    results = estimate(run.model, proposal, x, settings.iwae_samples, settings.batch_size, progress, fixed, indexed)
    results.update(split=settings.split, seed=settings.seed, run_dir=named or (folder and str(folder)))
    if getattr(run.guide, "last_fit_steps", None) is not None:  # q fitted per point at test time
        results["test_time_fit_steps"] = run.guide.last_fit_steps
    if settings.estimator == "ais":
        start = "prior" if settings.ais_start == "prior" else (lambda xb: guide_posterior(run.guide, xb, fixed=fixed))
        options = ais.AISOptions(steps=settings.ais_steps, chains=settings.ais_chains, start=start)
        result = ais.ais_log_likelihood(run.model, x, options, fixed=fixed, seed=settings.seed, progress=progress)
        results["ais"] = ais_summary(result, settings.ais_start)
    if settings.bdmc:
        results["bdmc"] = bdmc_summary(run, settings, fixed, progress)
    if methods:
        results["calibration"], results["calibration_table"] = calibration_section(run, methods,
                                                                                   settings.calibration, folder)
    path = None if folder is None else folder / "eval.json"
    if path is not None:
        write_json(path, results)
    return Evaluation(results, path)
