"""The objectives SVI can follow (``--elbo``): name -> an :class:`Objective`, the ELBO class that
implements it and what it accepts.

Each is a loss whose value is an estimate of -ELBO on the full-data scale
(the data plate scales a minibatch of B rows by N / B):

- ``trace``: ``Trace_ELBO``, the Monte Carlo estimate of
  E_q[log p(x, z) - log q(z | x)], reparameterised where the guide's sites
  allow, with score-function terms where they do not;
- ``meanfield``: ``TraceMeanField_ELBO``, the same bound with
  KL(q(z | x) || p(z)) analytic where it is known;
- ``enum``: ``TraceEnum_ELBO``, the same bound with the model's discrete
  sites marked ``infer={"enumerate": "parallel"}`` (or under
  ``config_enumerate``) summed out exactly instead of sampled (one plate,
  the data plate, below the enumeration dimensions), and the guide's
  discrete sites enumerated too (``enumerated.EnumELBO``: the exact expectation over q);
- ``relaxed``, ``relaxed-st``: the Gumbel-softmax and straight-through
  Gumbel-softmax estimators for one-hot latents, the temperature annealed
  (``pyro_vae.objectives.relaxed``: which bound each estimates);
- ``score-function``: the same ELBO, the guide's gradient by the score
  function with a baseline (``--baseline``; ``score_function.ScoreFunctionELBO``);
- ``iwae``, ``iwae-dreg``, ``rws``: the importance-weighted bound with K
  particles (``--particles``) per data point; its reparameterised gradient,
  the doubly reparameterised one for the guide, or reweighted wake-sleep
  (``pyro_vae.objectives.particles``); ``vimco``: that bound with the score-function gradient and leave-one-out
  baselines, for discrete guide sites (``pyro_vae.objectives.vimco``);
- ``wake-sleep``: the model by the wake phase, the guide by the sleep phase;
  its loss is -ELBO.

The bounds with particles report -(N/B) sum_i log (1/K) sum_k w_{k,i}. They
need a reparameterisable guide with no per-point tables or local refinement
and no global latents: :func:`objective_problem` and :func:`guide_problem`
say what a run cannot combine, in one line, from the capabilities of the
:class:`Objective` entries; a new objective is one entry of :data:`ELBOS`.
Every objective reads a site's log density masked and scaled as Pyro's
``Trace_ELBO`` does (``pyro_vae.program.density.site_log_prob``).
"""

import functools
import math
from typing import Callable, NamedTuple

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.objectives.enumerated import EnumELBO
from pyro_vae.objectives.particles import IWAE, IWAE_DReG, ReweightedWakeSleep, WakeSleep
from pyro_vae.objectives.relaxed import RelaxedELBO, Temperature
from pyro_vae.objectives.score_function import BASELINES, ScoreFunctionELBO
from pyro_vae.objectives.vimco import VIMCO
from pyro_vae.plumbing.registry import Registry
from pyro_vae.program.density import MAX_ENUMERATION


class Objective(NamedTuple):
    """An ``--elbo`` entry: ``build``, the ``pyro.infer.ELBO`` class that implements it, and what it accepts."""

    build: Callable
    particles: bool = False  # --particles K: K importance samples per point (else one z per point)
    baseline: bool = False  # --baseline: a score-function baseline
    temperature: bool = False  # relaxes one-hot latents at an annealed --temperature (a model with such latents)
    enumerates: bool = False  # sums discrete latents exactly: at most MAX_ENUMERATION joint values per point
    reparameterised: bool = False  # differentiates through z: the guide's draws must be reparameterisable
    discrete_guide: bool = False  # made for guides that draw discrete z (named to those the others refuse)
    amortized_only: bool = False  # runs the guide in a particle plate or on dreamt data: amortized guides only


ELBOS = Registry("objective", {
    "trace": Objective(Trace_ELBO),
    "meanfield": Objective(TraceMeanField_ELBO, reparameterised=True),
    "enum": Objective(EnumELBO, enumerates=True, discrete_guide=True),
    "score-function": Objective(ScoreFunctionELBO, baseline=True, discrete_guide=True),
    "iwae": Objective(IWAE, particles=True, reparameterised=True, amortized_only=True),
    "iwae-dreg": Objective(IWAE_DReG, particles=True, reparameterised=True, amortized_only=True),
    "rws": Objective(ReweightedWakeSleep, particles=True, discrete_guide=True, amortized_only=True),
    "vimco": Objective(VIMCO, particles=True, discrete_guide=True, amortized_only=True),
    "wake-sleep": Objective(WakeSleep, amortized_only=True),
    "relaxed": Objective(functools.partial(RelaxedELBO, straight_through=False), temperature=True),
    "relaxed-st": Objective(functools.partial(RelaxedELBO, straight_through=True), temperature=True),
})


def names_with(capability):
    """The names of the objectives with ``capability`` (an :class:`Objective` field), in registry order."""
    return [name for name, objective in ELBOS.items() if getattr(objective, capability)]


def either(names, conjunction="or"):
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}" if len(names) > 1 else names[0]


def objective_of(svi):
    """The objective (an ELBO) that ``svi`` steps on: SVI keeps only its bound ``loss`` method."""
    return getattr(svi.loss, "__self__", None)


def objective_state(svi):
    """The training state of ``svi``'s objective for a checkpoint (tensors only; {} for an objective
    without one): the score-function baselines, the relaxed objectives' step count."""
    objective = objective_of(svi)
    return objective.state_dict() if hasattr(objective, "state_dict") else {}


def load_objective_state(svi, state):
    """Restore :func:`objective_state` into ``svi``'s objective (nothing to do for an empty one)."""
    if state:
        objective_of(svi).load_state_dict(state)


def make_objective(name, particles=1, baseline="none", temperature=None):
    """``ELBOS[name]``'s ELBO built with the run's ``particles``, ``baseline`` and ``temperature``
    schedule (``relaxed.Temperature``; None: its defaults), each where the objective takes it."""
    objective = ELBOS[name]
    options = {}
    if objective.particles:
        options["num_particles"] = particles
    if objective.baseline:
        options["baseline"] = baseline
    if objective.temperature:
        options["temperature"] = temperature or Temperature()
    return objective.build(**options)


def objective_problem(elbo, particles=1, baseline="none"):
    """Why ``--elbo``, ``--particles`` and ``--baseline`` do not go together (one line), or None."""
    if particles < 1:
        return f"--particles must be at least 1, got {particles}"
    if baseline not in BASELINES:
        return f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}"
    if particles > 1 and not ELBOS[elbo].particles:
        return (f"--particles {particles}: --elbo {elbo} draws one z per point; particles apply to "
                f"--elbo {', '.join(names_with('particles'))}")
    if baseline != "none" and not ELBOS[elbo].baseline:
        return f"--baseline {baseline} applies to --elbo {either(names_with('baseline'))}, not {elbo}"
    return None


def temperature_problem(elbo, temperature):
    """Why ``temperature`` (a ``relaxed.Temperature``) cannot be used with ``--elbo elbo`` (one line), or None."""
    initial, minimum, rate = temperature
    if not (0 < initial < math.inf and 0 < minimum < math.inf):
        return f"--temperature and --min-temperature must be positive, got {initial} and {minimum}"
    if not 0 <= rate < math.inf:
        return f"--anneal-rate must be non-negative, got {rate}"
    if not ELBOS[elbo].temperature and tuple(temperature) != tuple(Temperature()):
        return (f"--temperature, --min-temperature and --anneal-rate apply to "
                f"--elbo {either(names_with('temperature'), 'and')}, not {elbo}")
    if minimum > initial:
        return f"--min-temperature {minimum} is above --temperature {initial}"
    return None


def guide_problem(elbo, guide_cls, bayesian_decoder=False):
    """Why guide class ``guide_cls`` (or a Bayesian decoder) cannot be fitted by ``elbo`` (one line), or None."""
    only = getattr(guide_cls, "objectives", None)  # a guide complete under some objectives only
    if only and elbo not in only:
        return f"guide {guide_cls.name} samples no latent: it needs --elbo {' or '.join(only)}, not {elbo}"
    objective = ELBOS[elbo]
    if objective.reparameterised and not getattr(guide_cls, "reparameterisable", True):
        return (f"--elbo {elbo} differentiates through z; guide {guide_cls.name} draws discrete z: use "
                f"{either(names_with('discrete_guide'))}")
    if not objective.amortized_only:
        return None
    if bayesian_decoder:
        return f"--elbo {elbo} weighs per-point latents only; --bayesian-decoder adds global ones (use trace)"
    if not getattr(guide_cls, "amortized", False) or hasattr(guide_cls, "local_steps"):
        return (f"--elbo {elbo} needs an amortized, reparameterisable guide without per-point tables or "
                f"local refinement steps; guide {guide_cls.name} has them (use amortized)")
    return None


def model_problem(elbo, model):
    """Why ``model`` cannot be fitted by ``elbo`` (one line), or None: exact enumeration of more joint
    values than ``density.MAX_ENUMERATION``, or a relaxation of a model without one-hot latents."""
    configurations = getattr(model, "configurations", None)  # K^M of categorical_mlp
    objective = ELBOS[elbo]
    if objective.enumerates and configurations is not None and configurations > MAX_ENUMERATION:
        sampling = [name for name, other in ELBOS.items()
                    if other.temperature or (other.discrete_guide and not other.enumerates)]
        return (f"--elbo {elbo}: model {model.name} has {getattr(model, 'categories', '?')}^{model.latent_dim} = "
                f"{configurations} joint latent values per point, more than the {MAX_ENUMERATION} enumerated; "
                f"use --elbo {either(sampling)}")
    if objective.temperature and configurations is None:
        return (f"--elbo {elbo} relaxes one-hot latents; model {model.name} has none "
                f"(use --model categorical_mlp)")
    return None
