"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

AIS (Neal 2001; for decoders, Wu, Burda, Salakhutdinov & Grosse 2017) moves
K chains per point through p_t(z) ∝ p0(z)^(1-β_t) p(x, z)^β_t, with
0 = β_0 < β_1 < ... < β_T = 1 (T = ``steps``), from a normalised start p0:
the prior p(z) (then p_t ∝ p(z) p(x | z)^β_t) or a proposal q(z | x). With
z_0 ~ p0 and z_t drawn by a transition that leaves p_t invariant,

    log w = sum_{t=1..T} (β_t - β_{t-1}) [log p(x, z_{t-1}) - log p0(z_{t-1})],   E[w] = p(x),

and the estimate log (1/K) sum_k w_k is a stochastic lower bound:
E[log (1/K) sum_k w_k] <= log p(x) by Jensen, and the gap closes as T grows.

BDMC (Grosse, Ghahramani & Adams 2015) brackets log p(x) on data simulated
from the model: (z, x) ~ p(z) p(x | z) makes z an exact draw from p(z | x),
and AIS run backwards from it (β from 1 to 0) has weights w_rev with
E[w_rev] = p0-normaliser / p(x) = 1/p(x). Jensen again gives
E[log (1/K) sum_k w_rev,k] <= -log p(x), so -log (1/K) sum_k w_rev,k is a
stochastic upper bound. Both bounds hold in expectation for every T; the
width upper - lower bounds the error of the forward estimate on such data.

Transitions are HMC with ``leapfrog_steps`` leapfrog steps, identity metric,
a Metropolis test, and one step size per (chain, point) adapted after every
transition as in Wu et al.'s code: times 1.02 while a running average
(weight 0.9) of the acceptance probability is above 0.65, else times 0.98,
kept within [1e-4, 0.5]. The decoder is fixed, so p_t factorises over points:
each (chain, point) pair, a "row", is an independent AIS run with its own
accept/reject and step size (a test over all N points at once would accept
ever less often as N grows). Each transition is one recorded graph; its
inputs include β, so one recording serves every temperature.
"""

import math
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from tqdm import tqdm

from pyro_vae.building_blocks import frozen
from pyro_vae.density import LATENT, log_joint_terms, observation
from pyro_vae.estimators import mean_and_se
from pyro_vae.nuts_sampler import identity_metric, kinetic_energy, per_chain, sample_momentum, select, velocity

TARGET_ACCEPT = 0.65  # optimal for HMC in high dimensions (Beskos et al. 2013), Wu et al.'s target
STEP_GROW, STEP_SHRINK, STEP_MIN, STEP_MAX = 1.02, 0.98, 1e-4, 0.5
ACCEPT_SMOOTHING = 0.9
INITIAL_STEP = 0.05
SIGMOID_RADIUS = 4.0  # δ of Grosse et al.'s sigmoid schedule
DEFAULT_STEPS, DEFAULT_CHAINS = 500, 16


def schedule(steps, kind="sigmoid"):
    """β_0 = 0 < ... < β_T = 1, T = ``steps``, float64. ``sigmoid`` (Grosse et
    al. 2015, used by Wu et al. 2017): β_t = (σ(δ(2t/T - 1)) - σ(-δ)) /
    (σ(δ) - σ(-δ)), δ = 4, dense at both ends where p_t changes fastest;
    ``linear``; ``geometric``: 0 then 10^-4 ... 1 evenly in log β."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "linear" or steps == 1:
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(SIGMOID_RADIUS * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    if kind == "geometric":
        return torch.cat([t[:1], torch.logspace(-4, 0, steps, dtype=torch.float64)])
    raise ValueError(f"unknown schedule {kind!r}; choose sigmoid, linear or geometric")


class _State(NamedTuple):
    """Every row's position (rows, 1, L), log p0 and log p(x, z) - log p0 (rows,), and their gradients."""

    z: torch.Tensor
    log_p0: torch.Tensor
    log_ratio: torch.Tensor
    grad_p0: torch.Tensor
    grad_ratio: torch.Tensor


def _target_terms(model, x_rows, fixed, proposal, shape):
    """z (rows, 1, L) -> (log p0, log p(x, z) - log p0, and their gradients).
    Rows are (chain, point) pairs in the order chain * N + point, as
    ``x_rows`` = x repeated per chain. Kept apart, not summed at one β, so a
    new temperature needs no new gradient: grad log p_t = g0 + β g1."""
    chains, n_points, dim = shape

    def terms(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            flat = z.reshape(-1, dim)
            log_lik, log_prior = log_joint_terms(model, x_rows, flat, fixed)
            if proposal is None:
                log_p0, log_ratio = log_prior, log_lik
            else:
                log_p0 = proposal.log_prob(flat.reshape(chains, n_points, dim)).reshape(-1)
                log_ratio = log_lik + log_prior - log_p0
            (grad_p0,) = torch.autograd.grad(log_p0.sum(), z, retain_graph=True)
            (grad_ratio,) = torch.autograd.grad(log_ratio.sum(), z)
        return log_p0.detach(), log_ratio.detach(), grad_p0, grad_ratio

    return terms


class _Trajectory(torch.nn.Module):
    """``leapfrog_steps`` leapfrog steps of per-row size ``step`` on log p_t =
    log p0 + β log ratio, β a 0-d tensor. nuts_sampler's ``Leapfrog`` takes
    one gradient; this carries the two terms of the tempered one, and unrolls
    the steps so a whole trajectory is one recorded call."""

    def __init__(self, terms, leapfrog_steps):
        super().__init__()
        self.terms = terms
        self.leapfrog_steps = leapfrog_steps

    def forward(self, z, r, grad_p0, grad_ratio, step, beta, inverse_mass):
        step = per_chain(step, z)
        log_p0 = log_ratio = None
        for _ in range(self.leapfrog_steps):
            r = r + 0.5 * step * (grad_p0 + beta * grad_ratio)
            z = z + step * velocity(r, inverse_mass)
            log_p0, log_ratio, grad_p0, grad_ratio = self.terms(z)
            r = r + 0.5 * step * (grad_p0 + beta * grad_ratio)
        return z, log_p0, log_ratio, grad_p0, grad_ratio, kinetic_energy(r, inverse_mass)


def _record(trajectory, z):
    """``trajectory`` recorded once with torch.jit.trace and frozen, as
    ``nuts_sampler.compile_leapfrog`` does: checked against the Python at a
    second point (other z, momenta, step and β); where recording fails or
    disagrees, the Python runs, with a warning."""
    trajectory = trajectory.eval()
    eye = identity_metric(z).inverse_mass
    step, beta, zeros = torch.full(z.shape[:1], 0.05, dtype=z.dtype, device=z.device), z.new_tensor(0.5), 0 * z
    example = (z, torch.cos(3 * z), zeros, zeros, step, beta, eye)
    check = (z + 0.1, torch.sin(2 * z), torch.cos(z), torch.sin(z), 0.5 * step, 0.5 * beta, eye)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch >= 2.9 marks torch.jit deprecated; the tracer's own notes
            traced = torch.jit.freeze(torch.jit.trace(trajectory, example, check_trace=False))
            agree = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(traced(*check), trajectory(*check)))
        reason = "the recording disagrees with the Python"
    except (RuntimeError, TypeError, ValueError) as error:  # a model's own error reappears in the Python
        agree, reason = False, str(error).splitlines()[0]
    if agree:
        return traced
    warnings.warn(f"AIS runs the model's Python at every step (slower): torch.jit.trace could not record it "
                  f"({reason})", stacklevel=4)
    return trajectory


def _hmc(trajectory, state, beta, step, metric, generator):
    """One HMC transition leaving p_t (at ``beta``) invariant, row by row.
    Returns the new state and each row's acceptance probability."""
    r = sample_momentum(metric, generator)
    z, log_p0, log_ratio, grad_p0, grad_ratio, kinetic = trajectory(
        state.z, r, state.grad_p0, state.grad_ratio, step, beta, metric.inverse_mass)
    energy0 = kinetic_energy(r, metric.inverse_mass) - state.log_p0 - beta * state.log_ratio
    energy1 = kinetic - log_p0 - beta * log_ratio
    log_accept = torch.nan_to_num(energy0 - energy1, nan=-math.inf).clamp(max=0)  # a NaN proposal is rejected
    accept = torch.rand(step.shape, generator=generator, dtype=step.dtype, device=step.device).log() < log_accept
    return _State(*select(accept, (z, log_p0, log_ratio, grad_p0, grad_ratio), state)), log_accept.exp()


def _anneal(trajectory, state, betas, generator, bar):
    """Run every row along ``betas`` (a list; ascending for forward AIS,
    descending for reverse): the weight increment at z_{t-1}, then a
    transition at β_t. None at β_T: it would not change the weights.
    Returns (log weights (rows,) float64, mean acceptance probability (rows,))."""
    metric = identity_metric(state.z)
    step = torch.full_like(state.log_p0, INITIAL_STEP)
    running = torch.full_like(step, TARGET_ACCEPT)
    log_w = torch.zeros_like(step, dtype=torch.float64)
    accept_sum = torch.zeros_like(log_w)
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]) * state.log_ratio.double()
        if t < len(betas) - 1:
            state, accept = _hmc(trajectory, state, state.z.new_tensor(betas[t]), step, metric, generator)
            accept_sum += accept
            running = ACCEPT_SMOOTHING * running + (1 - ACCEPT_SMOOTHING) * accept
            step = torch.where(running > TARGET_ACCEPT, step * STEP_GROW, step * STEP_SHRINK).clamp(STEP_MIN, STEP_MAX)
        bar.update()
    return log_w, accept_sum / max(len(betas) - 2, 1)


def _prior_draws(model, x, fixed):
    """z ~ p(z), one per row of ``x``, by running the model's program with its latent free."""
    with pyro.validation_enabled(False):
        return poutine.trace(poutine.condition(model, data=dict(fixed or {}))).get_trace(x).nodes[LATENT]["value"]


def _run_batch(model, x, betas, chains, start, fixed, leapfrog_steps, generator, exact_z, bar):
    """AIS on one batch of points: log weights (chains, N) and acceptance (N,).
    Starts at ``exact_z`` (N, L) in every chain if given (reverse AIS), else at p0."""
    n_points, dim = len(x), model.latent_dim
    x_rows = x.repeat(chains, *[1] * (x.dim() - 1))
    proposal = None if start == "prior" else start(x)
    if exact_z is not None:
        z = exact_z.repeat(chains, 1)
    elif proposal is None:
        z = _prior_draws(model, x_rows, fixed)
    else:
        z = proposal.sample((chains,))
    z = z.to(x.dtype).reshape(-1, 1, dim)  # a row per (chain, point): the leapfrog's "chains"
    terms = _target_terms(model, x_rows, fixed, proposal, (chains, n_points, dim))
    state = _State(z, *terms(z))
    if not torch.isfinite(state.log_p0 + state.log_ratio).all():
        raise ValueError("log p(x, z) or log p0(z) is not finite where AIS starts")
    trajectory = _record(_Trajectory(terms, leapfrog_steps), z)
    log_w, accept = _anneal(trajectory, state, betas, generator, bar)
    return log_w.view(chains, n_points), accept.view(chains, n_points).mean(0)


def _run(model, x, betas, chains, start, fixed, leapfrog_steps, seed, progress, batch_size, exact_z=None):
    """AIS along ``betas`` for every row of ``x``, ``batch_size`` points at a
    time (memory grows with batch_size * chains * data_dim). All randomness
    comes from ``seed``; the global RNG is left as it was."""
    if not (start == "prior" or callable(start)):
        raise ValueError(f"start must be 'prior' or a callable x -> q(z | x), not {start!r}")
    begin = time.perf_counter()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    batches = range(0, len(x), batch_size)
    log_w, accept = [], []
    devices = [x.device] if x.device.type == "cuda" else []
    with (frozen(model), torch.no_grad(), torch.random.fork_rng(devices=devices),
          tqdm(total=len(batches) * (len(betas) - 1), desc="AIS", disable=not progress) as bar):
        torch.manual_seed(seed)  # the draws from p0 (Pyro's and torch's samplers use the global RNG)
        for first in batches:
            rows = slice(first, first + batch_size)
            z = None if exact_z is None else exact_z[rows]
            w, a = _run_batch(model, x[rows], betas, chains, start, fixed, leapfrog_steps, generator, z, bar)
            log_w.append(w)
            accept.append(a)
    return torch.cat(log_w, 1), torch.cat(accept), time.perf_counter() - begin


@dataclass
class AISResult:
    """Per-point estimates and their summary. For forward AIS, ``log_likelihood``
    = log (1/K) sum_k w_k (a stochastic lower bound); for reverse AIS it is
    -log (1/K) sum_k w_rev,k (a stochastic upper bound). ``mean`` and ``se``:
    over points. ``ess``: (sum w)^2 / sum w^2 over chains, per point."""

    log_likelihood: torch.Tensor  # (N,)
    log_weights: torch.Tensor  # (chains, N), float64
    mean: float
    se: float
    acceptance: torch.Tensor  # (N,) mean acceptance probability over transitions and chains
    ess: torch.Tensor  # (N,)
    seconds: float
    steps: int
    chains: int


def _result(log_w, accept, seconds, steps, sign=1.0):
    chains = log_w.shape[0]
    estimate = sign * (log_w.logsumexp(0) - math.log(chains))
    ess = 1.0 / (torch.softmax(log_w, 0) ** 2).sum(0)
    mean, se = mean_and_se(estimate)
    return AISResult(estimate, log_w, mean, se, accept, ess, seconds, steps, chains)


def ais_log_likelihood(model, x, steps=DEFAULT_STEPS, chains=DEFAULT_CHAINS, start="prior", fixed=None,
                       leapfrog_steps=10, seed=0, progress=False, batch_size=100, schedule_kind="sigmoid"):
    """AIS estimate of log p(x) for each row of ``x`` (see the module's
    docstring): ``chains`` runs per point over ``steps`` distributions from
    ``start``, "prior" or a callable x_batch -> q(z | x) (batch shape
    (len(x_batch),), event (L,)); ``fixed``: the model's global values.
    Returns an :class:`AISResult`; its estimate is a stochastic lower bound."""
    betas = schedule(steps, schedule_kind).tolist()
    return _result(*_run(model, x, betas, chains, start, fixed, leapfrog_steps, seed, progress, batch_size), steps)


def simulate(model, num_points, fixed=None, seed=0):
    """(x, z) ~ p(z) p(x | z), ``num_points`` of each, by running the model's
    program: z from its latent site, x from ``density.observation``. Raises
    ValueError if the model's p(x | z) cannot be sampled."""
    device = next(model.parameters(), torch.empty(0)).device
    x_dummy = torch.zeros(num_points, model.data_dim, device=device)
    with frozen(model), torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        z = _prior_draws(model, x_dummy, fixed)
        try:
            x = observation(model, x_dummy, z, fixed).sample()
        except NotImplementedError as error:
            raise ValueError(f"model {model.name} cannot simulate data (its p(x | z) has no sample()), "
                             f"which BDMC needs") from error
    return x.to(x_dummy.dtype), z


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on simulated data: ``lower`` and ``upper``,
    means over points of the forward (stochastic lower bound) and reverse
    (stochastic upper bound) estimates; ``width`` = upper - lower."""

    lower: float
    upper: float
    width: float
    forward: AISResult
    reverse: AISResult
    x: torch.Tensor
    z: torch.Tensor


def bdmc(model, num_points, steps=DEFAULT_STEPS, chains=DEFAULT_CHAINS, start="prior", fixed=None,
         leapfrog_steps=10, seed=0, progress=False, batch_size=100, schedule_kind="sigmoid"):
    """BDMC (Grosse et al. 2015): simulate (z_i, x_i) ~ p(z) p(x | z); forward
    AIS on x gives log p(x) >= E[log (1/K) sum_k w_k]; reverse AIS from the
    exact posterior draw z_i (β from 1 to 0, every chain starting at z_i, so
    each w_rev,k has E[w_rev,k] = 1/p(x_i)) gives log p(x) <= E[-log (1/K)
    sum_k w_rev,k]. The reverse log weights, sum_t (β_{t-1} - β_t) [log p(x,
    z_t) - log p0(z_t)], are in ``reverse.log_weights``. Returns a :class:`BDMCResult`."""
    x, z = simulate(model, num_points, fixed, seed)
    betas = schedule(steps, schedule_kind)
    options = (chains, start, fixed, leapfrog_steps)
    forward = _result(*_run(model, x, betas.tolist(), *options, seed, progress, batch_size), steps)
    reverse = _result(*_run(model, x, betas.flip(0).tolist(), *options, seed + 1, progress, batch_size, z), steps, -1.0)
    return BDMCResult(forward.mean, reverse.mean, reverse.mean - forward.mean, forward, reverse, x, z)
