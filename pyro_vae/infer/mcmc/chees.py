"""ChEES-HMC (Hoffman, Radul & Sountsov 2021) for many small posteriors in lockstep.

Given the decoder, the posterior over z_1..z_N factorises over points, so
each point can have chains of its own. Here a row of z (rows, 1, L) is one
chain of one point, rows ordered chain-major (row = chain * N + point), and
``log_density`` returns one log density per row (``mcmc.sampler_target``'s
density does, given z shaped this way). Every row takes the same number of
leapfrog steps of the same size, so one batched call of the density serves
every row at every step and no row waits for another; NUTS in lockstep
waits for the deepest tree of the batch.

A transition (jittered HMC): r ~ N(0, M), n = ceil(u T / eps) leapfrog steps
with u in (0, 1] from a van der Corput (base-2 Halton) sequence, then each
row's own Metropolis test on H = -log p(z) + r^T C r / 2. The jitter does not
depend on the state, so each transition leaves every row's posterior
invariant whatever T and eps are.

Warm-up adapts, from all rows at once:

- the step size eps, one for all, by dual averaging (Hoffman & Gelman 2014,
  algorithm 5) so that the harmonic mean of the rows' acceptance
  probabilities approaches 0.651;
- the trajectory length T, one for all, up the ChEES criterion
  E[(|z' - E z'|^2 - |z - E z|^2)^2] / 4, whose gradient a row estimates as
  u (|z' - m'|^2 - |z - m|^2) (z' - m') . v' (m, m': the point's means over
  its chains, the proposals' weighted by acceptance; v' = C r', the
  velocity at the proposal), averaged over the rows weighted by their
  acceptance probabilities; log T moves by 0.025 times that gradient over
  its running root mean square (decay 0.95), clipped to +-0.35, and the run
  then keeps the average of log T over warm-up with weights t^-1/2: the
  settings of TFP's ``GradientBasedTrajectoryLengthAdaptation``;
- the metric: one dense L x L block per point from the covariance of its
  draws pooled over its chains, over Stan's windows (``adaptation``).

All random numbers come from one ``torch.Generator`` seeded by ``seed``.
"""

import math
from typing import NamedTuple

import torch
from tqdm import tqdm

from pyro_vae.infer.mcmc.adaptation import DualAveraging, MetricWindows, initial_step_size
from pyro_vae.infer.mcmc.integrators import HMCState, Leapfrog, init
from pyro_vae.infer.mcmc.metrics import (dense_block_metric, identity_metric, kinetic_energy, sample_momentum, select,
                                         velocity)
from pyro_vae.infer.mcmc.trees import MAX_ENERGY_ERROR
from pyro_vae.infer.recording import record, resolve_compile

TARGET_ACCEPT = 0.651  # the harmonic mean of the acceptance probabilities (Hoffman et al. 2021, after Beskos et al.)
LEARNING_RATE = 0.025  # on log T: TFP's GradientBasedTrajectoryLengthAdaptation defaults, here and below
SQUARED_GRADIENT_DECAY = 0.95
MAX_UPDATE = 0.35  # clip of one update of log T (TFP's, about log(2) / 2)
MAX_LEAPFROG_STEPS = 1000


class Proposal(NamedTuple):
    """What a transition proposed, per row, for the adaptation."""

    z: torch.Tensor
    velocity: torch.Tensor
    accept_prob: torch.Tensor
    diverging: torch.Tensor


def jitter(index):
    """The ``index``-th (from 1) term of the base-2 van der Corput sequence, in (0, 1)."""
    value, scale = 0.0, 0.5
    while index:
        value, index, scale = value + scale * (index & 1), index >> 1, scale / 2
    return value


def record_leapfrog(log_density, z, compile=False):
    """The leapfrog of ``log_density`` recorded at ``z``'s shapes
    (``recording.record``, compiled with ``compile``) and checked against
    the Python at a second point."""
    rows, _, dim = z.shape
    eye = torch.eye(dim, device=z.device, dtype=z.dtype).expand(*z.shape, dim).contiguous()
    step = torch.full((rows,), 0.1, device=z.device, dtype=z.dtype)
    example = (z, torch.cos(3 * z), torch.zeros_like(z), step, eye)
    check = (z + 0.1, torch.sin(2 * z), torch.cos(z), 2 * step, 2 * eye)
    return record(Leapfrog(log_density).eval(), example, check=check, name="ChEES-HMC", compile=compile,
                  stacklevel=5)


def step(leapfrog, state, step_size, n_steps, metric, generator):
    """One jittered-HMC transition of every row: ``n_steps`` leapfrog steps of
    size ``step_size`` (0-d), then each row's Metropolis test. Returns the new
    ``HMCState`` and the :class:`Proposal`."""
    r = sample_momentum(metric, generator)
    energy0 = -state.log_p + kinetic_energy(r, metric.inverse_mass)
    z, grad, steps = state.z, state.grad, step_size.expand(len(state.z)).contiguous()
    log_p = kinetic = None
    for _ in range(n_steps):
        z, r, grad, log_p, kinetic = leapfrog(z, r, grad, steps, metric.inverse_mass)
    log_accept = torch.nan_to_num(energy0 + log_p - kinetic, nan=-math.inf).clamp(max=0)
    uniform = torch.rand(log_accept.shape, generator=generator, dtype=log_accept.dtype, device=log_accept.device)
    accept = uniform.log() < log_accept
    new = HMCState(*select(accept, (z, log_p, grad), state))
    return new, Proposal(z, velocity(r, metric.inverse_mass), log_accept.exp(), log_accept < -MAX_ENERGY_ERROR)


class TrajectoryAdaptation:
    """The warm-up's eps (dual averaging on the harmonic-mean acceptance) and
    T (Adam with beta1 = 0 up the ChEES criterion, then averaged); see the module docstring."""

    def __init__(self, step_size, trajectory_length):
        self.dual = DualAveraging(step_size.reshape(1), TARGET_ACCEPT)
        self.step_size = step_size
        self.log_length = math.log(trajectory_length)
        self.log_length_average = self.log_length
        self.squared_gradient = 0.0
        self.t = 0

    def restart_step_size(self, step_size):
        """A new metric: eps found afresh, its dual averaging restarted; T kept."""
        self.dual = DualAveraging(step_size.reshape(1), TARGET_ACCEPT)
        self.step_size = step_size

    def update(self, start, proposal, u, chains):
        self.t += 1
        ok = ~proposal.diverging
        accept = torch.where(ok, proposal.accept_prob, torch.zeros_like(proposal.accept_prob))
        harmonic = ok.sum() / (1 / accept.clamp(min=1e-20))[ok].sum() if ok.any() else accept.new_zeros(())
        self.step_size = self.dual.update(harmonic.reshape(1))[0]
        # per point, centred over its chains (rows are chain-major)
        start, new, v = (a.reshape(chains, -1, a.shape[-1]) for a in (start, proposal.z, proposal.velocity))
        new = torch.where(new.isfinite(), new, torch.zeros_like(new))  # a diverged proposal has weight 0, not NaN
        weights = accept.reshape(chains, -1, 1)
        new_mean = (weights * new).sum(0) / weights.sum(0).clamp(min=1e-20)
        new_centred, start_centred = new - new_mean, start - start.mean(0)
        change = (new_centred**2).sum(-1) - (start_centred**2).sum(-1)
        gradients = u * change * (new_centred * v).sum(-1)  # d ChEES / dT, as TFP's: T's scale drops out below
        gradients = torch.where((weights[..., 0] > 1e-4) & gradients.isfinite(), gradients, torch.zeros_like(gradients))
        gradient = float((weights[..., 0] * gradients).sum() / (weights.sum() + 1e-20))
        self.squared_gradient = (SQUARED_GRADIENT_DECAY * self.squared_gradient
                                 + (1 - SQUARED_GRADIENT_DECAY) * gradient**2)
        corrected = self.squared_gradient / (1 - SQUARED_GRADIENT_DECAY**self.t)
        update = LEARNING_RATE * gradient / math.sqrt(corrected + 1e-20)
        self.log_length += max(-MAX_UPDATE, min(MAX_UPDATE, update))
        weight = self.t**-0.5
        self.log_length_average = (1 - weight) * self.log_length_average + weight * self.log_length

    def trajectory_length(self, step_size, averaged=False):
        """T (the current iterate; ``averaged``: the average the run keeps), at most
        ``MAX_LEAPFROG_STEPS`` steps of ``step_size``."""
        return min(math.exp(self.log_length_average if averaged else self.log_length), MAX_LEAPFROG_STEPS * step_size)


def leapfrog_steps(trajectory_length, step_size, iteration):
    """The jittered number of steps of iteration ``iteration`` (from 1): ceil(u T / eps), at least one."""
    return min(MAX_LEAPFROG_STEPS, max(1, math.ceil(jitter(iteration) * trajectory_length / step_size)))


def sample(log_density, init_z, chains, warmup=500, samples=500, seed=0, progress=False, compile=False,
           recorded=None):
    """ChEES-HMC draws, one chain per row of ``init_z`` (rows, 1, L), rows
    chain-major over ``chains`` chains of rows // chains points.

    ``log_density(z)`` takes z (rows, 1, L) and returns (log p per row, its
    gradient). ``compile`` (counting ``chains`` x iterations) and
    ``recorded``: as ``nuts.sample``.
    Returns (draws (rows, samples, 1, L), statistics of the kept iterations,
    each (rows, samples): ``acceptance_rate`` (the Metropolis probability),
    ``n_steps``, ``diverging``, ``step_size``).
    """
    compile = resolve_compile(compile, chains * (warmup + samples), init_z.device)
    state = init(init_z, log_density)
    generator = torch.Generator(device=state.z.device)
    generator.manual_seed(seed)
    recorded = {} if recorded is None else recorded
    key = ("chees", tuple(state.z.shape), state.z.dtype, state.z.device, bool(compile))
    if key not in recorded:
        recorded[key] = record_leapfrog(log_density, state.z, compile)
    leapfrog, python_leapfrog = recorded[key], Leapfrog(log_density)  # the latter for the step-size heuristic
    metric = identity_metric(state.z)
    step_size = initial_step_size(python_leapfrog, generator, state, torch.ones_like(state.log_p), metric).median()
    adaptation = TrajectoryAdaptation(step_size, float(step_size))
    length = float(step_size)
    windows, by_point = MetricWindows(warmup), (chains, -1, state.z.shape[-1])
    draws, infos = [], []
    with tqdm(total=warmup + samples, disable=not progress, desc="ChEES-HMC", unit="it") as bar:
        for iteration in range(warmup + samples):
            warming = iteration < warmup
            if warming:
                step_size = adaptation.step_size
                length = adaptation.trajectory_length(float(step_size))
            n_steps = leapfrog_steps(length, float(step_size), iteration + 1)
            start = state.z
            state, proposal = step(leapfrog, state, step_size, n_steps, metric, generator)
            bar.update()
            if not warming:
                draws.append(state.z)
                infos.append((proposal.accept_prob, n_steps, proposal.diverging, step_size))
                continue
            adaptation.update(start, proposal, jitter(iteration + 1), chains)
            covariance = windows.update(iteration, state.z.reshape(by_point))
            if covariance is not None:  # a window ended: one block per point, its chains pooled
                blocks = covariance.mean(0).expand(chains, -1, -1, -1)
                metric = dense_block_metric(blocks.reshape(-1, 1, *blocks.shape[-2:]).contiguous())
                found = initial_step_size(python_leapfrog, generator, state,
                                          adaptation.step_size.expand(len(state.z)), metric)
                adaptation.restart_step_size(found.median())
            if iteration + 1 == warmup:
                step_size = adaptation.dual.final()[0]
                length = adaptation.trajectory_length(float(step_size), averaged=True)
    if not draws:
        return init_z.new_zeros(init_z.shape[0], 0, *init_z.shape[1:]), {}
    rows, options = len(init_z), {"device": init_z.device}
    stats = {
        "acceptance_rate": torch.stack([a for a, _, _, _ in infos], 1),
        "n_steps": torch.tensor([n for _, n, _, _ in infos], **options).expand(rows, -1),
        "diverging": torch.stack([d for _, _, d, _ in infos], 1),
        "step_size": torch.stack([s for _, _, _, s in infos]).to(init_z.dtype).expand(rows, -1),
    }
    return torch.stack(draws, 1), stats
