"""Stan's warm-up: the step size by dual averaging, the metric from windows of draws.

The step size moves by dual averaging towards a mean acceptance statistic
(Hoffman & Gelman 2014, algorithm 5; ``pyro.ops.dual_averaging``), found
afresh by Stan's doubling heuristic whenever the metric changes; the metric's
blocks come from the covariance of each point's draws over windows of 25,
50, 100, ... iterations between an initial buffer of 75 and a final one of
50. :func:`window_adaptation` takes the kernel's ``step`` as an argument, so
this module knows nothing of any one sampler.
"""

import math

import torch
from pyro.ops.dual_averaging import DualAveraging as DualAveragingScheme

from pyro_vae.infer.mcmc.metrics import dense_block_metric, identity_metric, kinetic_energy, sample_momentum

TARGET_ACCEPT = 0.8  # Stan's and Pyro's target mean acceptance statistic for NUTS

def initial_step_size(leapfrog, generator, state, step_size, metric, max_doublings=50):
    """Stan's heuristic, per chain: double (or halve) the step size while one
    ``leapfrog`` step from the state keeps (or fails to keep) exp(H0 - H)
    above 0.8, momenta drawn from ``generator``."""

    def log_accept(step):
        r = sample_momentum(metric, generator)
        _, _, _, log_p_new, kinetic_new = leapfrog(state.z, r, state.grad, step, metric.inverse_mass)
        delta = (log_p_new - kinetic_new) - (state.log_p - kinetic_energy(r, metric.inverse_mass))
        return torch.nan_to_num(delta, nan=-math.inf)

    threshold = math.log(0.8)
    grow = log_accept(step_size) > threshold
    active = torch.ones_like(grow)
    for _ in range(max_doublings):
        trial = torch.where(grow, step_size * 2, step_size / 2)
        accept = log_accept(trial)
        crossed = torch.where(grow, accept <= threshold, accept >= threshold)
        step_size = torch.where(active, trial, step_size)
        active = active & ~crossed
        if not active.any():
            break
    return step_size


class DualAveraging:
    """Step-size adaptation of Hoffman & Gelman (2014), algorithm 5, one step
    size per chain: ``pyro.ops.dual_averaging.DualAveraging`` on log eps with
    Stan's constants (prox centre log(10 eps_0), t0 = 10, kappa = 0.75,
    gamma = 0.05), fed target - acceptance statistic. ``update`` returns the
    next eps; ``final`` the averaged iterate, used after warm-up."""

    def __init__(self, step_size, target=TARGET_ACCEPT):
        self.scheme = DualAveragingScheme(prox_center=(10 * step_size).log())
        self.target = target
        self.updates = 0

    def update(self, acceptance_rate):
        self.scheme.step(self.target - acceptance_rate)
        self.updates += 1
        return self.scheme.get_state()[0].exp()

    def final(self):
        if not self.updates:
            raise ValueError("no acceptance statistic yet: the averaged step size is undefined")
        return self.scheme.get_state()[1].exp()


def adaptation_windows(warmup, init_buffer=75, term_buffer=50, base_window=25):
    """Stan's schedule: [(start, end), ...] of the windows whose draws estimate
    the mass matrix, each twice the last, the last stretched to end
    ``term_buffer`` iterations before the end of warm-up."""
    if warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > warmup:
        init_buffer, term_buffer = int(0.15 * warmup), int(0.1 * warmup)
        base_window = warmup - init_buffer - term_buffer
    windows, start, size = [], init_buffer, base_window
    while True:
        end = start + size
        if end + 2 * size > warmup - term_buffer:
            windows.append((start, warmup - term_buffer))
            return windows
        windows.append((start, end))
        start, size = end, 2 * size


class WindowCovariance:
    """Running (Welford) mean and covariance of each point's draws, per chain.

    ``estimate``: the sample covariance S of the window's n draws, shrunk
    towards its diagonal by L / (n + L), then Stan's regularisation
    n/(n+5) S' + 1e-3 * 5/(n+5) I. Unshrunk, a dense L x L block from fewer
    draws than L is singular: Stan's first windows hold 25 and 50 draws, and
    with L = 50 (MNIST) the near-zero inverse-mass directions hardly move,
    so trees ran to the depth cap (1,023 leapfrog steps an iteration) until
    the last window. The shrinkage fades as draws accumulate (0.2 at 200
    draws of L = 50; 0.01 at 200 draws of L = 2)."""

    def __init__(self, like):
        self.n = 0
        self.mean = torch.zeros_like(like)
        self.scatter = torch.zeros(*like.shape, like.shape[-1], device=like.device, dtype=like.dtype)

    def update(self, z):
        self.n += 1
        delta = z - self.mean
        self.mean = self.mean + delta / self.n
        self.scatter = self.scatter + delta.unsqueeze(-1) * (z - self.mean).unsqueeze(-2)

    def estimate(self):
        n, dim = self.n, self.mean.shape[-1]
        eye = torch.eye(dim, device=self.mean.device, dtype=self.mean.dtype)
        covariance = self.scatter / max(n - 1, 1)
        shrink = dim / (n + dim)
        covariance = (1 - shrink) * covariance + shrink * torch.diag_embed(covariance.diagonal(dim1=-2, dim2=-1))
        return n / (n + 5.0) * covariance + 1e-3 * 5.0 / (n + 5.0) * eye


class MetricWindows:
    """Stan's adaptation windows over a warm-up of ``warmup`` iterations:
    ``update(iteration, z)`` adds the draw ``z`` to the window ``iteration``
    falls in, if any, and at the window's last iteration returns the
    covariance estimate of its draws (:class:`WindowCovariance`); else None."""

    def __init__(self, warmup):
        self.windows = adaptation_windows(warmup)
        self.covariance = None

    def update(self, iteration, z):
        window = next(((start, end) for start, end in self.windows if start <= iteration < end), None)
        if window is None:
            return None
        self.covariance = self.covariance or WindowCovariance(z)
        self.covariance.update(z)
        if iteration + 1 < window[1]:
            return None
        estimate, self.covariance = self.covariance.estimate(), None
        return estimate


def window_adaptation(step, kernel, state, num_steps, progress=None):
    """Stan's warm-up over ``num_steps`` transitions ``step(kernel, state,
    step_size, metric) -> (state, info)`` (``info.acceptance_rate`` per
    chain): dual averaging of the step size throughout, the metric
    re-estimated at the end of each adaptation window (and a step size found
    afresh for it by one-step trials of ``kernel.leapfrog`` with
    ``kernel.generator``). Returns the state, the final (averaged) step size
    and the metric."""
    metric = identity_metric(state.z)
    step_size = initial_step_size(kernel.leapfrog, kernel.generator, state, torch.ones_like(state.log_p), metric)
    adapter = DualAveraging(step_size)
    windows = MetricWindows(num_steps)
    for iteration in range(num_steps):
        state, info = step(kernel, state, step_size, metric)
        if progress is not None:
            progress.update()
        step_size = adapter.update(info.acceptance_rate)
        covariance = windows.update(iteration, state.z)
        if covariance is not None:  # a window ended: a new metric, and a step size found for it
            metric = dense_block_metric(covariance)
            step_size = initial_step_size(kernel.leapfrog, kernel.generator, state, step_size, metric)
            adapter = DualAveraging(step_size)
    return state, (adapter.final() if num_steps else step_size), metric
