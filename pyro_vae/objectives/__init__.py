"""The objectives SVI can follow (``--elbo``): name -> a Pyro ELBO class.

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
  discrete sites enumerated too (``EnumELBO``: the exact expectation over q);
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
say what a run cannot combine, in one line.
"""

import functools

from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate

from pyro_vae.objectives.particles import IWAE, IWAE_DReG, ReweightedWakeSleep, WakeSleep
from pyro_vae.program.density import MAX_ENUMERATION
from pyro_vae.objectives.relaxed import RELAXED, RelaxedELBO, Temperature
from pyro_vae.objectives.score_function import BASELINES, ScoreFunctionELBO
from pyro_vae.objectives.vimco import VIMCO


class EnumELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` (one plate) with the guide's discrete sites enumerated in parallel too
    (``config_enumerate``): the exact expectation over q of a guide that draws its discrete latents
    (``categorical_mlp``'s encoder), as well as the model's marked sites summed out."""

    def __init__(self):
        super().__init__(max_plate_nesting=1)

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)

ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "enum": EnumELBO,
    "score-function": ScoreFunctionELBO,
    "iwae": IWAE,
    "iwae-dreg": IWAE_DReG,
    "rws": ReweightedWakeSleep,
    "vimco": VIMCO,
    "wake-sleep": WakeSleep,
    "relaxed": functools.partial(RelaxedELBO, straight_through=False),
    "relaxed-st": functools.partial(RelaxedELBO, straight_through=True),
}
WITH_PARTICLES = ("iwae", "iwae-dreg", "rws", "vimco")  # the objectives --particles K applies to
WITH_BASELINE = ("score-function",)  # the objectives --baseline applies to
# objectives that run the guide inside a particle plate / on dreamt data: amortized guides, no local refinement
AMORTIZED_ONLY = ("iwae", "iwae-dreg", "rws", "wake-sleep", "vimco")


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
    """``ELBOS[name]`` built with the run's ``particles``, ``baseline`` and ``temperature`` schedule
    (``relaxed.Temperature``; None: its defaults)."""
    if name in RELAXED:
        return ELBOS[name](temperature=temperature or Temperature())
    if name in WITH_PARTICLES:
        return ELBOS[name](num_particles=particles)
    if name in WITH_BASELINE:
        return ELBOS[name](baseline=baseline)
    return ELBOS[name]()


def objective_problem(elbo, particles=1, baseline="none"):
    """Why ``--elbo``, ``--particles`` and ``--baseline`` do not go together (one line), or None."""
    if particles < 1:
        return f"--particles must be at least 1, got {particles}"
    if baseline not in BASELINES:
        return f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}"
    if particles > 1 and elbo not in WITH_PARTICLES:
        return (f"--particles {particles}: --elbo {elbo} draws one z per point; particles apply to "
                f"--elbo {', '.join(WITH_PARTICLES)}")
    if baseline != "none" and elbo not in WITH_BASELINE:
        return f"--baseline {baseline} applies to --elbo score-function, not {elbo}"
    return None


def guide_problem(elbo, guide_cls, bayesian_decoder=False):
    """Why guide class ``guide_cls`` (or a Bayesian decoder) cannot be fitted by ``elbo`` (one line), or None."""
    only = getattr(guide_cls, "objectives", None)  # a guide complete under some objectives only
    if only and elbo not in only:
        return f"guide {guide_cls.name} samples no latent: it needs --elbo {' or '.join(only)}, not {elbo}"
    if elbo in ("iwae", "iwae-dreg", "meanfield") and not getattr(guide_cls, "reparameterisable", True):
        return (f"--elbo {elbo} differentiates through z; guide {guide_cls.name} draws discrete z: use rws, "
                f"vimco, score-function or enum")
    if elbo not in AMORTIZED_ONLY:
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
    if elbo == "enum" and configurations is not None and configurations > MAX_ENUMERATION:
        return (f"--elbo enum: model {model.name} has {getattr(model, 'categories', '?')}^{model.latent_dim} = "
                f"{configurations} joint latent values per point, more than the {MAX_ENUMERATION} enumerated; "
                f"use --elbo relaxed, relaxed-st, score-function or rws")
    if elbo in RELAXED and configurations is None:
        return f"--elbo {elbo} relaxes one-hot latents; model {model.name} has none (use --model categorical_mlp)"
    return None
