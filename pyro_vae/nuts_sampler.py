"""NUTS for the local latents z_1..z_N of a model, several chains in one batch.

The state of a chain is the whole (N, L) array of latents, and one NUTS
chain samples their joint posterior p(z_1..z_N | x_1..x_N), as Pyro's and
NumPyro's NUTS do. Two things set it apart from those, both about speed:

- The chains move in lockstep so that one batched call of ``log_density``
  serves every chain at every leapfrog step: a chain whose tree has stopped
  takes steps of size zero until the iteration's deepest tree is done.
- The mass matrix is block diagonal with one dense L x L block per data
  point. Given the decoder the posterior factorises over points, so its
  covariance has exactly this shape: the metric whitens each point's
  correlated posterior, which a diagonal metric cannot, at the cost of N
  small blocks.

Each iteration a chain builds its tree by repeated doubling (Hoffman &
Gelman 2014). Every new subtree of 2^d leapfrog steps is computed whole;
it is rejected if a step diverged or if any of its balanced sub-subtrees
makes a U-turn, the checks recursive NUTS makes while building it. A draw is
picked by multinomial sampling inside the subtree and biased progressive
sampling between subtrees, and the tree stops at the generalised U-turn
criterion (Betancourt 2017), as in Stan and NumPyro.

Warm-up is Stan's: the step size by dual averaging towards a mean acceptance
statistic of 0.8 (Hoffman & Gelman 2014, algorithm 5); the mass matrix
blocks from the covariance of each point's draws, regularised as in Stan,
over windows of 25, 50, 100, ... iterations between an initial buffer of 75
and a final one of 50; after each window the step size is found afresh.

All random numbers come from one ``torch.Generator`` seeded by ``seed``: the
same seed on the same device gives the same draws.
"""

import math
import warnings
from typing import NamedTuple

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_map
from tqdm import tqdm

MAX_ENERGY_ERROR = 1000.0  # a leapfrog step whose energy grows by more than this diverged (Stan's threshold)
TARGET_ACCEPT = 0.8
# sample(compile="auto") compiles from this many chain-iterations on: on 2 CPU cores compiling the
# steps of a small model cost about 30 s in a fresh process (5 s with Inductor's on-disk cache) and
# saved about 7 ms an iteration (README, "NUTS on torch.compile")
AUTO_COMPILE_ITERATIONS = 4000


# --------------------------------------------------------------------------- the metric
#
# A chain's position z is an (N, L) array, its momentum r ~ N(0, M), with the
# inverse mass matrix C = M^{-1} block diagonal: C_i (L, L) for point i.
# H(z, r) = -log p(z) + sum_i r_i^T C_i r_i / 2; velocity dz_i/dt = C_i r_i.
# Tensors carry a leading chain axis: z (chains, N, L), C (chains, N, L, L).


class Metric(NamedTuple):
    """The Euclidean metric of every chain: C = M^{-1}, one dense L x L block
    per point, and A^{-T} for C = A A^T, which turns standard normal noise
    into momenta r ~ N(0, M)."""

    inverse_mass: torch.Tensor  # (chains, N, L, L)
    momentum_factor: torch.Tensor  # (chains, N, L, L)


def dense_block_metric(inverse_mass):
    """The :class:`Metric` with inverse mass matrix blocks ``inverse_mass``."""
    factor = torch.linalg.cholesky(inverse_mass)
    eye = torch.eye(inverse_mass.shape[-1], device=inverse_mass.device, dtype=inverse_mass.dtype)
    return Metric(inverse_mass, torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False).mT)


def identity_metric(z):
    """M = I for chains shaped like ``z`` (chains, N, L)."""
    chains, n_points, dim = z.shape
    eye = torch.eye(dim, device=z.device, dtype=z.dtype).expand(chains, n_points, dim, dim).contiguous()
    return Metric(eye, eye)


def velocity(r, inverse_mass):
    return (inverse_mass @ r.unsqueeze(-1)).squeeze(-1)


def dot(a, b):
    """Inner product of two chain states, one number per chain."""
    return (a * b).sum((-2, -1))


def kinetic_energy(r, inverse_mass):
    return 0.5 * dot(r, velocity(r, inverse_mass))


def sample_momentum(metric, generator):
    """r ~ N(0, M): r = A^{-T} e has covariance A^{-T} A^{-1} = C^{-1} = M."""
    factor = metric.momentum_factor
    noise = torch.randn(factor.shape[:-1], generator=generator, device=factor.device, dtype=factor.dtype)
    return velocity(noise, factor)


# --------------------------------------------------------------------------- Hamiltonian dynamics


def per_chain(value, like):
    """A (chains,) tensor shaped to broadcast against ``like``."""
    return value.view(-1, *[1] * (like.dim() - 1))


class Leapfrog(torch.nn.Module):
    """One leapfrog step of signed size ``step`` (chains,) for every chain;
    ``grad`` is the gradient of log p at ``z``. Returns (z, r, grad, log p,
    kinetic energy) after it. A module so that :func:`compile_leapfrog` can
    record it, ``log_density`` included, as one graph."""

    def __init__(self, log_density):
        super().__init__()
        self.log_density = log_density

    def forward(self, z, r, grad, step, inverse_mass):
        step = per_chain(step, z)
        r = r + 0.5 * step * grad
        z = z + step * velocity(r, inverse_mass)
        log_p, grad = self.log_density(z)
        r = r + 0.5 * step * grad
        return z, r, grad, log_p, kinetic_energy(r, inverse_mass)


def resolve_compile(compile, chain_iterations):
    """``compile`` (True, False or "auto") as True or False for a run of
    ``chain_iterations`` in all: "auto" compiles from ``AUTO_COMPILE_ITERATIONS`` on."""
    return chain_iterations >= AUTO_COMPILE_ITERATIONS if compile == "auto" else bool(compile)


def compile_leapfrog(log_density, z, compile=False):
    """The leapfrog step recorded once (:func:`record`) at ``z``'s shapes
    and checked against the Python at a second point: a step then costs its
    tensor operations and none of the Python that produced them (for a Pyro
    model, most of the cost)."""
    leapfrog = Leapfrog(log_density).eval()
    chains, n_points, dim = z.shape
    eye = torch.eye(dim, device=z.device, dtype=z.dtype).expand(chains, n_points, dim, dim).contiguous()
    step = torch.full((chains,), 0.1, device=z.device, dtype=z.dtype)
    example = (z, torch.cos(3 * z), torch.zeros_like(z), step, eye)
    check = (z + 0.1, torch.sin(2 * z), torch.cos(z), 2 * step, 2 * eye)  # any other point would do
    return record(leapfrog, example, check, "NUTS", compile, stacklevel=4)


def record(function, example, check, sampler, compile=False, stacklevel=3):
    """``function`` recorded once at the inputs ``example`` as a graph of
    the ATen operations it runs (``make_fx``: the gradient's operations
    included, the Python that produced them gone), and with ``compile``
    compiled by ``torch.compile`` (Inductor: fused kernels, no per-operation
    dispatch). Tensors it reads without taking them as inputs (a decoder's
    weights, a data buffer) enter the graph by reference: changed in place,
    the recording sees the new values, so one recording serves every call
    with the same shapes.

    A recording keeps the one path the code took at ``example``, so it is
    checked against the Python at the inputs ``check`` (None: ``function``
    is pure tensor code with no branch on values). Where compiling fails the
    uncompiled graph runs; where recording fails or disagrees, the Python
    runs; either way with a warning naming the ``sampler``."""
    try:
        graph = make_fx(function)(*_distinct(example))
        agree = check is None or _agree(graph(*check), function(*check))
        reason = "the recording disagrees with the Python"
    except Exception as error:  # noqa: BLE001 -- a model's own error reappears in the Python
        agree, reason = False, str(error).strip().splitlines()[0]
    if not agree:
        warnings.warn(f"{sampler} runs the model's Python at every step (slower): it could not be recorded "
                      f"({reason})", stacklevel=stacklevel)
        return function
    if not compile:
        return graph
    try:
        compiled = torch.compile(graph, dynamic=False, fullgraph=True)
        if _agree(compiled(*(check or example)), graph(*(check or example))):
            return compiled
        reason = "the compiled graph disagrees with the recording"
    except Exception as error:  # noqa: BLE001 -- no compiler, an unsupported operation: the recording still runs
        reason = str(error).strip().splitlines()[0]
    warnings.warn(f"{sampler} runs uncompiled: torch.compile failed ({reason})", stacklevel=stacklevel)
    return graph


def _distinct(example):
    """``example`` with every tensor that appears twice copied: the recorder
    would take two arguments that are one tensor for one input."""
    seen = set()

    def fresh(value):
        if isinstance(value, torch.Tensor) and id(value) in seen:
            return value.clone()
        seen.add(id(value))
        return value

    return tree_map(fresh, example)


def _agree(outputs, expected):
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True) for a, b in zip(outputs, expected))


def is_turning(r_left, r_right, r_sum, inverse_mass):
    """The generalised no-U-turn criterion for a trajectory whose momenta sum
    to ``r_sum`` (Betancourt 2017, appendix A.4.2, as in NumPyro): it turns
    when an end's velocity C r_end points against the trajectory, the sum
    taken without half of each end. C is symmetric, so (C r_end) . s =
    r_end . (C s) and one product with C serves both ends."""
    r_sum = r_sum - 0.5 * (r_left + r_right)
    v_sum = velocity(r_sum, inverse_mass)
    return (dot(r_left, v_sum) <= 0) | (dot(r_right, v_sum) <= 0)


def subtree_turning(momenta, inverse_mass):
    """Whether any balanced binary subtree (2, 4, ..., all leaves) of a new
    subtree turns: the checks recursive NUTS makes while building it, here
    all at once. ``momenta`` (2^d, chains, N, L) in the order the leaves were
    made (the criterion is symmetric, so the direction does not matter)."""
    firsts, lasts, sums = [], [], []
    first = last = total = momenta  # blocks of one leaf; each pass pairs neighbouring blocks
    while len(total) > 1:
        first, last, total = first[0::2], last[1::2], total[0::2] + total[1::2]
        firsts.append(first)
        lasts.append(last)
        sums.append(total)
    if not sums:
        return torch.zeros(momenta.shape[1], dtype=torch.bool, device=momenta.device)
    return is_turning(torch.cat(firsts), torch.cat(lasts), torch.cat(sums), inverse_mass).any(0)


def select(mask, new, old):
    """Per chain, ``new`` where ``mask`` else ``old``, for tuples of tensors."""
    return tuple(torch.where(per_chain(mask, a), a, b) for a, b in zip(new, old))


class Tree(NamedTuple):
    """The NUTS tree of every chain, as it grows."""

    left_z: torch.Tensor  # the two ends of the trajectory: position, momentum, gradient
    left_r: torch.Tensor
    left_grad: torch.Tensor
    right_z: torch.Tensor
    right_r: torch.Tensor
    right_grad: torch.Tensor
    z: torch.Tensor  # the draw picked so far, with its log density and gradient
    log_p: torch.Tensor
    grad: torch.Tensor
    log_weight: torch.Tensor  # log of the sum over the leaves of exp(H0 - H)
    r_sum: torch.Tensor  # the sum of the leaves' momenta
    active: torch.Tensor  # still growing: no U-turn, no divergence yet
    depth: torch.Tensor  # doublings kept so far
    n_steps: torch.Tensor  # leapfrog steps so far
    accept_sum: torch.Tensor  # sum over those steps of min(1, exp(H0 - H))
    diverging: torch.Tensor


class Subtree(NamedTuple):
    """The 2^d leaves of a new subtree, in the order they were made, each
    (2^d, chains, ...), made in direction ``forward`` (chains,), with the
    uniform draws that pick among them."""

    z: torch.Tensor
    r: torch.Tensor
    grad: torch.Tensor
    log_p: torch.Tensor
    kinetic: torch.Tensor
    forward: torch.Tensor
    uniform_leaves: torch.Tensor  # (2^d, chains): picks a leaf inside the subtree
    uniform: torch.Tensor  # (chains,): moves the draw into the subtree or not


def extend_tree(tree, sub, energy0, inverse_mass):
    """Merge the new subtree ``sub`` into ``tree``.

    The subtree is rejected, and the tree stops growing, if a step diverged
    or one of its balanced sub-subtrees turns. Otherwise a draw is picked
    inside it in proportion to exp(H0 - H) (Gumbel-max on
    ``uniform_leaves``), the tree's draw moves to it with probability
    min(1, w_subtree / w_tree) (biased progressive sampling, on
    ``uniform``), and the tree stops if the whole trajectory now turns.
    Pure tensor code with no branch on values, so :class:`ExtendTree` can
    record it once per depth.

    Recursive NUTS stops building a subtree at its first U-turn or
    divergence; here the whole subtree has been computed, so a divergence
    past an inner U-turn is counted too, and its steps enter the acceptance
    statistic. The draws are the same; the divergence count errs on the
    side of warning.
    """
    active = tree.active
    log_w = torch.nan_to_num(energy0 + sub.log_p - sub.kinetic, nan=-math.inf)  # (2^d, chains): H0 - H per leaf
    diverged = (log_w < -MAX_ENERGY_ERROR).any(0)
    accept_sum = tree.accept_sum + active * log_w.exp().clamp(max=1).sum(0)
    n_steps = tree.n_steps + active * len(sub.z)
    diverging = tree.diverging | (active & diverged)

    pick = (log_w - torch.log(-torch.log(sub.uniform_leaves))).argmax(0)
    index = torch.arange(len(pick), device=pick.device)
    sub_log_weight = torch.logsumexp(log_w, 0)
    ok = active & ~diverged & ~subtree_turning(sub.r, inverse_mass)
    depth = tree.depth + ok  # as Stan counts: doublings that were kept
    move = ok & (sub.uniform.log() < sub_log_weight - tree.log_weight)
    z, log_p, grad = select(move, (sub.z[pick, index], sub.log_p[pick, index], sub.grad[pick, index]),
                            (tree.z, tree.log_p, tree.grad))
    log_weight = torch.where(ok, torch.logaddexp(tree.log_weight, sub_log_weight), tree.log_weight)
    end = (sub.z[-1], sub.r[-1], sub.grad[-1])
    right = select(ok & sub.forward, end, (tree.right_z, tree.right_r, tree.right_grad))
    left = select(ok & ~sub.forward, end, (tree.left_z, tree.left_r, tree.left_grad))
    r_sum = torch.where(per_chain(ok, sub.r[0]), tree.r_sum + sub.r.sum(0), tree.r_sum)
    active = ok & ~is_turning(left[1], right[1], r_sum, inverse_mass)
    return Tree(*left, *right, z, log_p, grad, log_weight, r_sum, active, depth, n_steps, accept_sum, diverging)


class ExtendTree:
    """:func:`extend_tree` recorded (:func:`record`) once per subtree depth
    (its shapes, and so its loops, depend on the depth only): a doubling
    then costs its tensor operations, about a hundred, without the Python
    around each. Recordings are shared by every run (module-level
    ``RECORDED_EXTEND``): the function has no state."""

    def __init__(self, compile=False):
        self.compile = compile

    def __call__(self, tree, sub, energy0, inverse_mass):
        key = (len(sub.z), tuple(sub.z.shape), sub.z.dtype, sub.z.device, self.compile)
        if key not in RECORDED_EXTEND:
            # the recorder hands named tuples over as plain tuples
            RECORDED_EXTEND[key] = record(
                lambda tree, sub, energy0, inverse_mass: tuple(extend_tree(Tree(*tree), Subtree(*sub), energy0,
                                                                           inverse_mass)),
                (tuple(tree), tuple(sub), energy0, inverse_mass), None, "NUTS", self.compile)
        return Tree(*RECORDED_EXTEND[key](tuple(tree), tuple(sub), energy0, inverse_mass))


RECORDED_EXTEND = {}


# --------------------------------------------------------------------------- the kernel: init and step


class NUTSState(NamedTuple):
    """Where every chain is: position (chains, N, L), log density (chains,) and its gradient."""

    z: torch.Tensor
    log_p: torch.Tensor
    grad: torch.Tensor


class NUTSInfo(NamedTuple):
    """What one transition did, per chain."""

    acceptance_rate: torch.Tensor  # mean of min(1, exp(H0 - H)) over the tree's steps
    tree_depth: torch.Tensor  # doublings kept
    n_steps: torch.Tensor  # leapfrog steps
    diverging: torch.Tensor
    energy: torch.Tensor  # H at the start of the transition


class Kernel(NamedTuple):
    """What a transition needs besides the state: the recorded leapfrog step
    and tree bookkeeping, the random stream and the depth cap."""

    leapfrog: object
    extend: ExtendTree
    generator: torch.Generator
    max_tree_depth: int


def init(z, log_density):
    """The :class:`NUTSState` of chains at ``z`` (chains, N, L)."""
    z = z.detach()
    log_p, grad = log_density(z)
    if not torch.isfinite(log_p).all():
        raise ValueError("the log density is not finite where the chains start")
    return NUTSState(z, log_p, grad)


def build_kernel(log_density, state, seed=0, max_tree_depth=10, compile=False, recorded=None):
    """A :class:`Kernel` for ``log_density``: the leapfrog step recorded at
    ``state``'s shapes (compiled with ``compile``), and one ``torch.Generator``
    seeded by ``seed``, from which every random number of the run is drawn.

    ``recorded``, a dict the caller keeps beside ``log_density``, holds its
    recordings by shape: a second run with it records nothing (compile once,
    for Monte Carlo EM's E-steps, say; the density must read its weights and
    data by reference, as :func:`record` explains)."""
    generator = torch.Generator(device=state.z.device)
    generator.manual_seed(seed)
    recorded = {} if recorded is None else recorded
    key = (tuple(state.z.shape), state.z.dtype, state.z.device, bool(compile))
    if key not in recorded:
        recorded[key] = compile_leapfrog(log_density, state.z, compile)
    return Kernel(recorded[key], ExtendTree(compile), generator, max_tree_depth)


def build_subtree(kernel, tree, forward, step, depth, metric):
    """2^depth leapfrog steps of signed size ``step`` on from the tree's end
    in each chain's direction ``forward``, with the uniforms that pick among them."""
    chains = len(step)
    options = {"device": step.device, "dtype": step.dtype}
    leaf = select(forward, (tree.right_z, tree.right_r, tree.right_grad), (tree.left_z, tree.left_r, tree.left_grad))
    leaves = []
    for _ in range(2**depth):
        leaf = kernel.leapfrog(*leaf[:3], step, metric.inverse_mass)
        leaves.append(leaf)
    z, r, grad, log_p, kinetic = (torch.stack(t) for t in zip(*leaves))
    uniform_leaves = torch.rand(2**depth, chains, generator=kernel.generator, **options)
    uniform = torch.rand(chains, generator=kernel.generator, **options)
    return Subtree(z, r, grad, log_p, kinetic, forward, uniform_leaves, uniform)


def step(kernel, state, step_size, metric):
    """One multinomial NUTS transition of every chain: the tree doubles, in a
    random direction each time, until it stops or reaches the depth cap.
    Returns the new :class:`NUTSState` and the :class:`NUTSInfo`."""
    z, log_p, grad = state
    chains = z.shape[0]
    options = {"device": z.device, "dtype": z.dtype}
    r = sample_momentum(metric, kernel.generator)
    energy0 = -log_p + kinetic_energy(r, metric.inverse_mass)
    zeros = torch.zeros(chains, **options)
    tree = Tree(z, r, grad, z, r, grad, z, log_p, grad, log_weight=zeros, r_sum=r,
                active=torch.ones(chains, dtype=torch.bool, device=z.device),
                depth=torch.zeros(chains, dtype=torch.long, device=z.device), n_steps=zeros, accept_sum=zeros,
                diverging=torch.zeros(chains, dtype=torch.bool, device=z.device))
    for depth in range(kernel.max_tree_depth):
        if not tree.active.any():
            break
        forward = torch.rand(chains, generator=kernel.generator, **options) < 0.5
        signed = step_size * (forward.to(z.dtype) * 2 - 1) * tree.active  # a stopped chain stands still
        subtree = build_subtree(kernel, tree, forward, signed, depth, metric)
        tree = kernel.extend(tree, subtree, energy0, metric.inverse_mass)
    info = NUTSInfo(tree.accept_sum / tree.n_steps, tree.depth, tree.n_steps, tree.diverging, energy0)
    return NUTSState(tree.z, tree.log_p, tree.grad), info


# --------------------------------------------------------------------------- warm-up


def initial_step_size(kernel, state, step_size, metric, max_doublings=50):
    """Stan's heuristic, per chain: double (or halve) the step size while one
    leapfrog step from the state keeps (or fails to keep) exp(H0 - H) above 0.8."""

    def log_accept(step):
        r = sample_momentum(metric, kernel.generator)
        _, _, _, log_p_new, kinetic_new = kernel.leapfrog(state.z, r, state.grad, step, metric.inverse_mass)
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
    """Step-size adaptation of Hoffman & Gelman (2014), algorithm 5, with
    Stan's constants, one per chain: drives the mean acceptance statistic
    towards ``target``; ``final`` is the averaged iterate used after warm-up."""

    gamma, t0, kappa = 0.05, 10.0, 0.75

    def __init__(self, step_size, target=TARGET_ACCEPT):
        self.mu = (10 * step_size).log()
        self.target = target
        self.t = 0
        self.error_avg = torch.zeros_like(step_size)
        self.log_step_avg = torch.zeros_like(step_size)

    def update(self, acceptance_rate):
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.error_avg = (1 - eta) * self.error_avg + eta * (self.target - acceptance_rate)
        log_step = self.mu - math.sqrt(self.t) / self.gamma * self.error_avg
        weight = self.t**-self.kappa
        self.log_step_avg = weight * log_step + (1 - weight) * self.log_step_avg
        return log_step.exp()

    def final(self):
        return self.log_step_avg.exp()


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
    """Running (Welford) mean and covariance of each point's draws, per chain;
    ``estimate`` is Stan's regularised n/(n+5) S + 1e-3 * 5/(n+5) I."""

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
        n, eye = self.n, torch.eye(self.mean.shape[-1], device=self.mean.device, dtype=self.mean.dtype)
        covariance = self.scatter / max(n - 1, 1)
        return n / (n + 5.0) * covariance + 1e-3 * 5.0 / (n + 5.0) * eye


# --------------------------------------------------------------------------- warm-up and sampling


def window_adaptation(kernel, state, num_steps, progress=None):
    """Stan's warm-up over ``num_steps`` transitions: dual averaging of the
    step size throughout, the metric re-estimated at the end of each
    adaptation window (and a step size found afresh for it). Returns the
    state, the final (averaged) step size and the metric."""
    metric = identity_metric(state.z)
    step_size = initial_step_size(kernel, state, torch.ones_like(state.log_p), metric)
    adapter = DualAveraging(step_size)
    windows = adaptation_windows(num_steps)
    covariance = None
    for iteration in range(num_steps):
        state, info = step(kernel, state, step_size, metric)
        if progress is not None:
            progress.update()
        step_size = adapter.update(info.acceptance_rate)
        window = next(((start, end) for start, end in windows if start <= iteration < end), None)
        if window is None:
            continue
        covariance = covariance or WindowCovariance(state.z)
        covariance.update(state.z)
        if iteration + 1 == window[1]:  # the window ends: a new metric, and a step size found for it
            metric = dense_block_metric(covariance.estimate())
            covariance = None
            step_size = initial_step_size(kernel, state, step_size, metric)
            adapter = DualAveraging(step_size)
    return state, (adapter.final() if num_steps else step_size), metric


def sample(log_density, init_z, warmup=500, samples=500, seed=0, max_tree_depth=10, progress=False, compile=False,
           recorded=None):
    """NUTS draws from p(z), one chain per leading row of ``init_z``.

    ``log_density(z)`` takes z of shape (chains, N, L) and returns (log p(z)
    per chain, shape (chains,), and its gradient in z, same shape as z).
    ``init_z`` (chains, N, L) is where the chains start.

    ``compile``: True compiles the recorded steps with ``torch.compile``
    (Inductor), False runs the recordings uncompiled, "auto" compiles when
    ``chains x (warmup + samples)`` reaches ``AUTO_COMPILE_ITERATIONS``,
    where compiling was measured to pay back. ``recorded`` carries
    recordings from run to run (:func:`build_kernel`).

    Returns (draws of shape (chains, samples, N, L), statistics of the kept
    iterations, each of shape (chains, samples): ``acceptance_rate``,
    ``tree_depth``, ``n_steps``, ``diverging``, ``energy``, ``step_size``).
    """
    compile = resolve_compile(compile, len(init_z) * (warmup + samples))
    state = init(init_z, log_density)
    kernel = build_kernel(log_density, state, seed, max_tree_depth, compile, recorded)
    with tqdm(total=warmup + samples, disable=not progress, desc="NUTS", unit="it") as bar:
        state, step_size, metric = window_adaptation(kernel, state, warmup, bar)
        draws, infos = [], []
        for _ in range(samples):
            state, info = step(kernel, state, step_size, metric)
            bar.update()
            draws.append(state.z)
            infos.append({**info._asdict(), "step_size": step_size})
    if not draws:
        return init_z.new_zeros(init_z.shape[0], 0, *init_z.shape[1:]), {}
    stats = {name: torch.stack([i[name] for i in infos], 1) for name in infos[0]}
    return torch.stack(draws, 1), stats
