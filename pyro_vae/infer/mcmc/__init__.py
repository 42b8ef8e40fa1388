"""Hamiltonian Monte Carlo for the local latents of a model, several chains in one batch.

One module per job, lower layers first (nothing imports upwards):

- ``metrics``: the Euclidean metric, one dense L x L block per data point;
- ``integrators``: the sampler's state and the leapfrog;
- ``trees``: NUTS's trajectory, grown one leaf at a time, recorded once;
- ``adaptation``: Stan's warm-up (step size by dual averaging, metric
  windows), handed the kernel's ``step`` as an argument;
- ``nuts``: the NUTS kernel (``init``, ``step``) and the ``sample`` driver
  that strings warm-up and draws together;
- ``chees``: ChEES-HMC, every point its own chains, jittered trajectories;
- ``sampling``: the samplers on a model's latents (``sample_latents``),
  ArviZ's InferenceData and diagnostics, and Monte Carlo EM.
"""

# The samplers ``sampling.sample_latents`` runs; ``--sampler`` offers these names.
SAMPLERS = ("nuts", "chees")
