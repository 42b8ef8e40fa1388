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
  the data plate, below the enumeration dimensions);
- ``score-function``: the same ELBO, the guide's gradient by the score
  function with a baseline (``--baseline``; ``score_function.ScoreFunctionELBO``);
- ``iwae``, ``iwae-dreg``, ``rws``: the importance-weighted bound with K
  particles (``--particles``) per data point; its reparameterised gradient,
  the doubly reparameterised one for the guide, or reweighted wake-sleep
  (``pyro_vae.bounds``);
- ``wake-sleep``: the model by the wake phase, the guide by the sleep phase;
  its loss is -ELBO.

The bounds with particles report -(N/B) sum_i log (1/K) sum_k w_{k,i}. They
need a reparameterisable guide with no per-point tables or local refinement
and no global latents: :func:`objective_problem` and :func:`guide_problem`
say what a run cannot combine, in one line.
"""

import functools

from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_vae.bounds import IWAE, IWAE_DReG, ReweightedWakeSleep, WakeSleep
from pyro_vae.score_function import BASELINES, ScoreFunctionELBO

ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "enum": functools.partial(TraceEnum_ELBO, max_plate_nesting=1),
    "score-function": ScoreFunctionELBO,
    "iwae": IWAE,
    "iwae-dreg": IWAE_DReG,
    "rws": ReweightedWakeSleep,
    "wake-sleep": WakeSleep,
}
WITH_PARTICLES = ("iwae", "iwae-dreg", "rws")  # the objectives --particles K applies to
WITH_BASELINE = ("score-function",)  # the objectives --baseline applies to
# objectives that run the guide inside a particle plate / on dreamt data: amortized guides, no local refinement
AMORTIZED_ONLY = ("iwae", "iwae-dreg", "rws", "wake-sleep")


def make_objective(name, particles=1, baseline="none"):
    """``ELBOS[name]`` built with the run's ``particles`` and ``baseline``."""
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
    if elbo not in AMORTIZED_ONLY:
        return None
    if bayesian_decoder:
        return f"--elbo {elbo} weighs per-point latents only; --bayesian-decoder adds global ones (use trace)"
    if not getattr(guide_cls, "amortized", False) or hasattr(guide_cls, "local_steps"):
        return (f"--elbo {elbo} needs an amortized, reparameterisable guide without per-point tables or "
                f"local refinement steps; guide {guide_cls.name} has them (use amortized)")
    return None
