"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

AIS (Neal 2001; for decoders Wu, Burda, Salakhutdinov & Grosse 2017) moves K chains per point through
p_t(z) ∝ p0(z)^(1-β_t) p(x, z)^β_t, 0 = β_0 < ... < β_T = 1 (T = ``steps``), from a normalised p0: the
prior p(z) (then p_t ∝ p(z) p(x | z)^β_t) or a proposal q(z | x). With z_0 ~ p0 and each z_t drawn by a
transition that leaves p_t invariant,

    log w = sum_{t=1..T} (β_t - β_{t-1}) [log p(x, z_{t-1}) - log p0(z_{t-1})],   E[w] = p(x),

so log (1/K) sum_k w_k is a stochastic lower bound (expectation <= log p(x), by Jensen), tightening as T grows.

BDMC (Grosse, Ghahramani & Adams 2015), on data simulated from the model: (z, x) ~ p(z) p(x | z) makes z an
exact draw from p(z | x); AIS run backwards from it (β from 1 to 0) has E[w_rev] = Z_0 / p(x) = 1/p(x), so
E[log (1/K) sum_k w_rev,k] <= -log p(x) and -log (1/K) sum_k w_rev,k is a stochastic upper bound. The gap
between the bounds bounds the forward estimate's error on such data (in expectation).

Transitions: HMC with ``leapfrog_steps`` leapfrog steps, identity metric, a Metropolis test. The decoder is
fixed, so p_t factorises over points: each (chain, point) pair, a "row", is an independent run with its own
test (one test over all N points would accept ever less often as N grows). A point's step size adapts as in
Wu et al.'s code (x 1.02 while a running average, weight 0.9, of the acceptance probability is above 0.65,
else x 0.98, within [1e-4, 0.5]) from Stan's heuristic at β_1, and every transition each row draws its step
from U(0.5, 1.5) x that: with a fixed step, trajectories can come back near their start (jitter halved the
spread of log w on the pPCA tests and gained 1-3 nats on a random MNIST-sized decoder at T = 100-400).
Wu et al. adapt each chain on its own acceptance, so its kernel depends on its own past and need not leave
p_t invariant; here one extra pilot chain per point drives the adaptation and its weights are dropped: given
the pilot, each kept chain sees p_t-invariant kernels and its weight is exactly unbiased (cost: 1/K more
rows). BDMC's reverse runs follow the forward run's step sizes, which depend on x only, never on the exact
draw z. A trajectory is one recorded graph with β among its inputs: one recording serves every temperature.
"""

import copy
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm import tqdm

from pyro_vae.nn import frozen, seeded_global_rng
from pyro_vae.program.density import layout_of, observation, prior_draws, unconstrained_terms
from pyro_vae.program.estimators import mean_and_se
from pyro_vae.infer.mcmc.adaptation import initial_step_size
from pyro_vae.infer.mcmc.integrators import HMCState, Leapfrog
from pyro_vae.infer.mcmc.metrics import dot, identity_metric, per_chain, select
from pyro_vae.infer.recording import record

TARGET_ACCEPT = 0.65  # optimal for HMC in high dimension (Beskos et al. 2013); Wu et al.'s target
STEP_GROW, STEP_SHRINK, STEP_MIN, STEP_MAX, ACCEPT_SMOOTHING = 1.02, 0.98, 1e-4, 0.5, 0.9
STEP_JITTER = 0.5
SIGMOID_RADIUS = 4.0  # δ of the sigmoid schedule
# 100 MNIST points (L = 50, hidden 400): about 100 s on 2 idle CPU cores (210 s with 1000 steps); on a
# trained decoder 500 and 1000 steps agreed within 0.03 nats, both 0.7-1 nat above IWAE with K = 5000
DEFAULT_STEPS, DEFAULT_CHAINS = 500, 16


def annealing_schedule(steps, kind="sigmoid"):
    """β_0 = 0 < ... < β_T = 1, T = ``steps``, float64. ``sigmoid`` (Grosse et al. 2015, as used by Wu et
    al. 2017): β_t = (σ(δ(2t/T - 1)) - σ(-δ)) / (σ(δ) - σ(-δ)), δ = 4, dense at both ends, where p_t
    changes fastest; ``linear``; ``geometric``: 0, then 10^-4 ... 1 evenly spaced in log β."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "linear" or (steps == 1 and kind in ("sigmoid", "geometric")):
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(SIGMOID_RADIUS * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    if kind == "geometric":
        return torch.cat([t[:1], torch.logspace(-4, 0, steps, dtype=torch.float64)])
    raise ValueError(f"unknown schedule {kind!r}; choose sigmoid, linear or geometric")


class _State(NamedTuple):
    """Each row's z (rows, 1, L), log p0 and log ratio = log p(x, z) - log p0 (rows,), their gradients."""

    z: torch.Tensor
    log_p0: torch.Tensor
    log_ratio: torch.Tensor
    grad_p0: torch.Tensor
    grad_ratio: torch.Tensor


def _unvalidated(distribution):
    """A shallow copy that skips the support check of its values: the check reads them (a branch in
    Python) and would stop the trajectory's recording."""
    distribution = copy.copy(distribution)
    distribution._validate_args = False
    if hasattr(distribution, "base_dist"):
        distribution.base_dist = _unvalidated(distribution.base_dist)
    return distribution


def _target_terms(model, x_rows, fixed, proposal, shape, layout):
    """u (rows, 1, dim) -> (log p0, log ratio, their gradients), rows ordered chain * N + point as
    ``x_rows``; u the flat unconstrained latents (``density.Layout``; z for the built-in models), so p0
    and p(x, z) are densities of u. Kept apart, not summed at one β, so a new β needs no new gradient:
    grad log p_t = g0 + β g1."""
    chains, n_points, dim = shape
    if isinstance(proposal, torch.distributions.Distribution):
        proposal = _unvalidated(proposal)

    def log_q(flat):
        u = flat.reshape(chains, n_points, dim)
        if layout.is_identity():
            return proposal.log_prob(u).reshape(-1)
        values, log_det = layout.unflatten(u)
        if isinstance(proposal, torch.distributions.Distribution):  # posterior(x): q of the one continuous site
            values = values[layout.continuous[0].name]
        return (proposal.log_prob(values) + log_det).reshape(-1)

    def terms(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            flat = z.reshape(-1, dim)
            log_lik, log_prior = unconstrained_terms(model, x_rows, flat, fixed)
            if proposal is None:
                log_p0, log_ratio = log_prior, log_lik
            else:
                log_p0 = log_q(flat)
                log_ratio = log_lik + log_prior - log_p0
            (grad_p0,) = torch.autograd.grad(log_p0.sum(), z, retain_graph=True)
            (grad_ratio,) = torch.autograd.grad(log_ratio.sum(), z)
        return log_p0.detach(), log_ratio.detach(), grad_p0, grad_ratio

    return terms


class _Trajectory(torch.nn.Module):
    """``leapfrog_steps`` leapfrog steps of per-row size ``step`` on log p_t = log p0 + β log ratio, β a
    0-d tensor, M = I. Unlike ``integrators.Leapfrog`` (one gradient, a dense metric) it carries the two
    gradient terms, unrolls the steps into one recorded call, and moves z by r itself: ``velocity``'s
    product with (rows, 1, L, L) identity blocks took 13% of an MNIST-sized step."""

    def __init__(self, terms, leapfrog_steps):
        super().__init__()
        self.terms = terms
        self.leapfrog_steps = leapfrog_steps

    def forward(self, z, r, grad_p0, grad_ratio, step, beta):
        step = per_chain(step, z)
        log_p0 = log_ratio = None
        for _ in range(self.leapfrog_steps):
            r = r + 0.5 * step * (grad_p0 + beta * grad_ratio)
            z = z + step * r
            log_p0, log_ratio, grad_p0, grad_ratio = self.terms(z)
            r = r + 0.5 * step * (grad_p0 + beta * grad_ratio)
        return z, log_p0, log_ratio, grad_p0, grad_ratio, 0.5 * dot(r, r)


def _record(trajectory, z):
    """``trajectory`` recorded once (``recording.record``), as ``trees.record_steps`` does,
    and checked against the Python at a second point (other z, momenta, step and β); where recording fails
    or disagrees, the Python runs, with a warning."""
    trajectory = trajectory.eval()
    step, beta, zeros = torch.full(z.shape[:1], 0.05, dtype=z.dtype, device=z.device), z.new_tensor(0.5), 0 * z
    example = (z, torch.cos(3 * z), zeros, zeros, step, beta)
    check = (z + 0.1, torch.sin(2 * z), torch.cos(z), torch.sin(z), 0.5 * step, 0.5 * beta)
    return record(trajectory, example, check=check, name="AIS", stacklevel=6)


def _hmc(trajectory, state, beta, step, generator):
    """One HMC transition leaving p_t invariant, row by row: r ~ N(0, I), a trajectory, a Metropolis test
    on H = -log p_t(z) + |r|^2 / 2. Returns the new state and each row's acceptance probability."""
    r = torch.randn(state.z.shape, generator=generator, dtype=state.z.dtype, device=state.z.device)
    z, log_p0, log_ratio, grad_p0, grad_ratio, kinetic = trajectory(
        state.z, r, state.grad_p0, state.grad_ratio, step, beta)
    energy0 = 0.5 * dot(r, r) - state.log_p0 - beta * state.log_ratio
    energy1 = kinetic - log_p0 - beta * log_ratio
    log_accept = torch.nan_to_num(energy0 - energy1, nan=-math.inf).clamp(max=0)  # a NaN proposal is rejected
    accept = torch.rand(step.shape, generator=generator, dtype=step.dtype, device=step.device).log() < log_accept
    return _State(*select(accept, (z, log_p0, log_ratio, grad_p0, grad_ratio), state)), log_accept.exp()


def _initial_step(terms, state, beta, generator):
    """Per row, Stan's heuristic (``adaptation.initial_step_size``) at temperature ``beta``: double or
    halve from 0.05 until one leapfrog step's acceptance crosses 0.8."""

    def log_density(z):
        log_p0, log_ratio, grad_p0, grad_ratio = terms(z)
        return log_p0 + beta * log_ratio, grad_p0 + beta * grad_ratio

    start = HMCState(state.z, state.log_p0 + beta * state.log_ratio, state.grad_p0 + beta * state.grad_ratio)
    step = initial_step_size(Leapfrog(log_density), generator, start, torch.full_like(start.log_p, 0.05),
                             identity_metric(state.z))
    return step.clamp(STEP_MIN, STEP_MAX)


def _anneal(trajectory, state, betas, steps, generator, bar):
    """Every row along ``betas`` (ascending: forward AIS; descending: reverse): the weight increment at
    z_{t-1}, then a transition at β_t (none at β_T: it would not change the weights). ``steps``: per point,
    (T - 1, N) to follow, or (N,) to adapt from on the pilot, the last N rows. Returns log weights (rows,)
    in float64, mean acceptance (rows,) and the step sizes used (T - 1, N)."""
    adapt, n_points = steps.dim() == 1, steps.shape[-1]
    step, running, used = steps, torch.full_like(steps[..., :1], TARGET_ACCEPT), []
    log_w = torch.zeros_like(state.log_p0, dtype=torch.float64)
    accept_sum = torch.zeros_like(log_w)
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]) * state.log_ratio.double()
        if t < len(betas) - 1:
            step = step if adapt else steps[t - 1]
            used.append(step)
            uniform = torch.rand(len(state.z), generator=generator, dtype=step.dtype, device=step.device)
            row_step = step.repeat(len(state.z) // n_points) * (1 + STEP_JITTER * (2 * uniform - 1))
            state, accept = _hmc(trajectory, state, state.z.new_tensor(betas[t]), row_step, generator)
            accept_sum += accept
            if adapt:
                running = ACCEPT_SMOOTHING * running + (1 - ACCEPT_SMOOTHING) * accept[-n_points:]
                step = torch.where(running > TARGET_ACCEPT, step * STEP_GROW, step * STEP_SHRINK)
                step = step.clamp(STEP_MIN, STEP_MAX)
        bar.update()
    used = torch.stack(used) if used else state.z.new_zeros(0, n_points)
    return log_w, accept_sum / max(len(betas) - 2, 1), used


def _run_batch(model, x, betas, options, fixed, generator, bar, exact_z=None, steps=None):
    """AIS on one batch of points, from ``exact_z`` (N, dim) in every chain if given (reverse AIS), else
    from p0. With ``steps`` (T - 1, N) the step sizes are followed, else adapted on a pilot chain. Returns
    log weights (chains, N), acceptance (N,) and step sizes (T - 1, N)."""
    chains, start = options.chains, options.start
    layout = layout_of(model, x, fixed)
    n_points, dim = len(x), layout.dim
    copies = chains + (steps is None)  # the pilot is the last copy
    x_rows = x.repeat(copies, *[1] * (x.dim() - 1))
    proposal = None if start == "prior" else start(x)
    if exact_z is not None:
        z = exact_z.repeat(copies, 1)
    elif proposal is None:
        z = layout.flatten(prior_draws(model, x_rows, fixed))
    else:
        z = proposal.sample((copies,))
        z = z if layout.is_identity() else layout.flatten(z)
    z = z.to(x.dtype).reshape(-1, 1, dim)  # a row per (chain, point): the "chains" of the mcmc helpers
    terms = _target_terms(model, x_rows, fixed, proposal, (copies, n_points, dim), layout)
    state = _State(z, *terms(z))
    if not torch.isfinite(state.log_p0 + state.log_ratio).all():
        raise ValueError("log p(x, z) or log p0(z) is not finite where AIS starts")
    if steps is None:  # the pilot's own start: a kept chain's states never enter a step size
        steps = _initial_step(terms, state, betas[1], generator)[-n_points:] if len(betas) > 2 else x.new_ones(n_points)
    log_w, accept, used = _anneal(_record(_Trajectory(terms, options.leapfrog_steps), z), state, betas, steps, generator, bar)
    kept = slice(0, chains * n_points)
    return log_w[kept].view(chains, n_points), accept[kept].view(chains, n_points).mean(0), used


def _run(model, x, betas, options, fixed, seed, progress, exact_z=None, steps=None):
    """AIS along ``betas`` for every row of ``x``, ``options.batch_size`` points at a time (memory grows
    with batch_size * chains * data_dim). All randomness comes from ``seed``; the global RNG is left as it
    was. Returns log weights (chains, N), acceptance (N,), step sizes (T - 1, N) and seconds."""
    if not (options.start == "prior" or callable(options.start)):
        raise ValueError(f"start must be 'prior' or a callable x -> q(z | x), not {options.start!r}")
    batch_size = options.batch_size
    begin = time.perf_counter()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    outputs = []
    with (frozen(model), torch.no_grad(), seeded_global_rng(seed, x.device),  # the draws from p0 use the global RNG
          tqdm(total=math.ceil(len(x) / batch_size) * (len(betas) - 1), desc="AIS", disable=not progress) as bar):
        for first in range(0, len(x), batch_size):
            rows = slice(first, first + batch_size)
            outputs.append(_run_batch(model, x[rows], betas, options, fixed, generator, bar, None if exact_z is None
                                      else exact_z[rows], None if steps is None else steps[:, rows]))
    log_w, accept, used = (torch.cat(parts, -1) for parts in zip(*outputs))
    return log_w, accept, used, time.perf_counter() - begin


@dataclass
class AISResult:
    """Per point, ``log_likelihood``: log (1/K) sum_k w_k for forward AIS (a stochastic lower bound),
    -log (1/K) sum_k w_rev,k for reverse AIS (an upper bound); ``mean``, ``se``: over points;
    ``acceptance``: mean acceptance probability; ``ess``: (sum_k w_k)^2 / sum_k w_k^2."""

    log_likelihood: torch.Tensor  # (N,)
    log_weights: torch.Tensor  # (chains, N), float64
    mean: float
    se: float
    acceptance: torch.Tensor  # (N,)
    step_sizes: torch.Tensor  # (steps - 1, N), before jitter
    ess: torch.Tensor  # (N,)
    seconds: float
    steps: int
    chains: int


def _result(log_w, accept, step_sizes, seconds, steps, sign=1.0):
    estimate = sign * (log_w.logsumexp(0) - math.log(len(log_w)))
    ess = 1.0 / (torch.softmax(log_w, 0) ** 2).sum(0)
    return AISResult(estimate, log_w, *mean_and_se(estimate), accept, step_sizes, ess, seconds, steps, len(log_w))


@dataclass(frozen=True)
class AISOptions:
    """How AIS anneals: ``chains`` runs per point through ``steps`` distributions from ``start``,
    "prior" or a callable x_batch -> q(z | x) (batch shape (len(x_batch),), event (L,)); HMC transitions
    of ``leapfrog_steps`` leapfrog steps; β on the ``schedule`` (:func:`annealing_schedule`);
    ``batch_size`` points at a time."""

    steps: int = DEFAULT_STEPS
    chains: int = DEFAULT_CHAINS
    start: object = "prior"
    leapfrog_steps: int = 10
    schedule: str = "sigmoid"
    batch_size: int = 100


def ais_log_likelihood(model, x, options=AISOptions(), *, fixed=None, seed=0, progress=False):
    """AIS estimate of log p(x) for each row of ``x`` (module docstring), a stochastic lower bound, annealed
    as ``options`` (:class:`AISOptions`) say; ``fixed``: the model's global values. Returns an AISResult."""
    betas = annealing_schedule(options.steps, options.schedule).tolist()
    return _result(*_run(model, x, betas, options, fixed, seed, progress), options.steps)


def simulate(model, num_points, *, fixed=None, seed=0):
    """(x, u) ~ p(z) p(x | z), ``num_points`` rows, from the model's program: z from its latent sites (u their
    flat unconstrained values), x from ``density.observation``; ValueError if p(x | z) cannot be sampled."""
    device = next(model.parameters(), torch.empty(0)).device
    x_dummy = torch.zeros(num_points, model.data_dim, device=device)
    with frozen(model), torch.no_grad(), seeded_global_rng(seed, device):
        values = prior_draws(model, x_dummy, fixed)
        z = layout_of(model, x_dummy, fixed).flatten(values)
        try:
            x = observation(model, x_dummy, values, fixed).sample()
        except NotImplementedError as error:
            raise ValueError(f"model {model.name} cannot simulate data (its p(x | z) has no sample()), "
                             f"which BDMC needs") from error
    return x.to(x_dummy.dtype), z


@dataclass
class BDMCResult:
    """``lower``, ``upper``: means over points of the forward and reverse estimates; ``width`` = upper - lower."""

    lower: float
    upper: float
    width: float
    forward: AISResult
    reverse: AISResult  # log_weights: log w_rev = sum_t (β_{t-1} - β_t) [log p(x, z_t) - log p0(z_t)]
    x: torch.Tensor
    z: torch.Tensor


def bdmc(model, num_points, options=AISOptions(), *, fixed=None, seed=0, progress=False):
    """BDMC (Grosse et al. 2015): simulate (z_i, x_i) ~ p(z) p(x | z); forward AIS on x_i gives
    E[log (1/K) sum_k w_k] <= log p(x_i); reverse AIS from the exact posterior draw z_i (β from 1 to 0,
    every chain starting at z_i, so each E[w_rev,k] = 1/p(x_i)) gives E[-log (1/K) sum_k w_rev,k] >=
    log p(x_i); both annealed as ``options`` say. Returns a :class:`BDMCResult`."""
    x, z = simulate(model, num_points, fixed=fixed, seed=seed)
    betas = annealing_schedule(options.steps, options.schedule)
    forward = _result(*_run(model, x, betas.tolist(), options, fixed, seed, progress), options.steps)
    reverse = _result(*_run(model, x, betas.flip(0).tolist(), options, fixed, seed + 1, progress, z,
                            forward.step_sizes.flip(0)), options.steps, -1.0)
    return BDMCResult(forward.mean, reverse.mean, reverse.mean - forward.mean, forward, reverse, x, z)
