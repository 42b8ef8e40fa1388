"""NUTS for the local latents z_1..z_N of a model, several chains in one batch.

The state of a chain is the whole (N, L) array of latents, and one NUTS
chain samples their joint posterior p(z_1..z_N | x_1..x_N), as Pyro's and
NumPyro's NUTS do. Two things set it apart from those, both about speed:
the chains move in lockstep, so that one batched call of ``log_density``
serves every chain at every leapfrog step (``trees``); and the mass matrix
is block diagonal with one dense L x L block per data point (``metrics``).

The kernel is :func:`init` and :func:`step` over an ``HMCState``, given a
:class:`Kernel` (the recorded tree steps, the random stream, the depth
cap); :func:`sample` strings Stan's warm-up (``adaptation``) and the draws
together. All random numbers come from one ``torch.Generator`` seeded by
``seed``: the same seed on the same device gives the same draws.
"""

from typing import NamedTuple

import torch
from tqdm import tqdm

from pyro_vae.infer.mcmc.adaptation import window_adaptation
from pyro_vae.infer.mcmc.integrators import HMCState, Leapfrog, init
from pyro_vae.infer.mcmc.metrics import kinetic_energy, sample_momentum
from pyro_vae.infer.mcmc.trees import Subtree, Tree, checkpoint_masks, open_subtree, record_steps
from pyro_vae.infer.recording import resolve_compile

__all__ = ["HMCState", "Kernel", "NUTSInfo", "build_kernel", "init", "sample", "step"]

class NUTSInfo(NamedTuple):
    """What one transition did, per chain."""

    acceptance_rate: torch.Tensor  # mean of min(1, exp(H0 - H)) over the tree's steps
    tree_depth: torch.Tensor  # doublings kept
    n_steps: torch.Tensor  # leapfrog steps
    diverging: torch.Tensor
    energy: torch.Tensor  # H at the start of the transition


class Kernel(NamedTuple):
    """What a transition needs besides the state: the leapfrog (Python, for
    the step-size heuristic), the recorded leaf step and tree merge
    (``trees.record_steps``), the random stream and the depth cap."""

    leapfrog: object
    add_leaf: object  # the recorded leaf step
    extend: object
    generator: torch.Generator
    max_tree_depth: int


def build_kernel(log_density, state, seed=0, max_tree_depth=10, compile=False, recorded=None):
    """A :class:`Kernel` for ``log_density``: the leaf step and the tree
    merge recorded at ``state``'s shapes (compiled with ``compile``), and one
    ``torch.Generator`` seeded by ``seed``, from which every random number of
    the run is drawn.

    ``recorded``, a dict the caller keeps beside ``log_density``, holds its
    recordings by shape: a second run with it records nothing (compile once,
    for Monte Carlo EM's E-steps, say; the density must read its weights and
    data by reference, as ``recording.record`` explains)."""
    generator = torch.Generator(device=state.z.device)
    generator.manual_seed(seed)
    recorded = {} if recorded is None else recorded
    key = (tuple(state.z.shape), state.z.dtype, state.z.device, bool(compile), max_tree_depth)
    if key not in recorded:
        recorded[key] = record_steps(log_density, state.z, max_tree_depth, compile)
    return Kernel(Leapfrog(log_density), *recorded[key], generator, max_tree_depth)


def step(kernel, state, step_size, metric):
    """One multinomial NUTS transition of every chain, leaving p(z) invariant.

    Inputs: the :class:`Kernel`, the ``HMCState`` (z (chains, N, L)), the step
    size per chain (chains,) and the ``metrics.Metric`` (inverse mass blocks
    C). Momenta r ~ N(0, C^-1); H(z, r) = -log p(z) + r^T C r / 2. The tree
    doubles, in a random direction each time, until the generalised U-turn
    criterion or the depth cap; each doubling grows a subtree of 2^depth
    leaves one leapfrog step at a time and stops it early once every chain's
    subtree has diverged or turned, as recursive NUTS does; the draw is picked
    among the leaves in proportion to exp(-H). Returns the new ``HMCState``
    and the :class:`NUTSInfo`."""
    z, log_p, grad = state
    chains, slots = z.shape[0], kernel.max_tree_depth
    options = {"device": z.device, "dtype": z.dtype}
    r = sample_momentum(metric, kernel.generator)
    energy0 = -log_p + kinetic_energy(r, metric.inverse_mass)
    zeros = torch.zeros(chains, **options)
    tree = Tree(z, r, grad, z, r, grad, z, log_p, grad, log_weight=zeros, r_sum=r,
                active=torch.ones(chains, dtype=torch.bool, device=z.device),
                depth=torch.zeros(chains, dtype=torch.long, device=z.device), n_steps=zeros, accept_sum=zeros,
                diverging=torch.zeros(chains, dtype=torch.bool, device=z.device))
    n_tree = len(Tree._fields)
    forward = torch.rand(chains, generator=kernel.generator, **options) < 0.5
    sub = open_subtree(tree, forward, z.new_zeros(slots, *z.shape))
    for depth in range(kernel.max_tree_depth):
        if not tree.active.any():
            break
        signed = step_size * (forward.to(z.dtype) * 2 - 1)
        uniforms = torch.rand(2**depth + 1, chains, generator=kernel.generator, **options)
        for leaf in range(2**depth):
            sub = Subtree(*kernel.add_leaf(*sub, signed, energy0, metric.inverse_mass, uniforms[leaf],
                                           *checkpoint_masks(leaf, slots, z.device)))
            if not sub.building.any():
                break
        next_forward = torch.rand(chains, generator=kernel.generator, **options) < 0.5
        merged = kernel.extend(*tree, *sub, forward, uniforms[-1], metric.inverse_mass, next_forward)
        tree, sub, forward = Tree(*merged[:n_tree]), Subtree(*merged[n_tree:]), next_forward
    info = NUTSInfo(tree.accept_sum / tree.n_steps, tree.depth, tree.n_steps, tree.diverging, energy0)
    return HMCState(tree.z, tree.log_p, tree.grad), info


def sample(log_density, init_z, warmup=500, samples=500, seed=0, max_tree_depth=10, progress=False, compile=False,
           recorded=None):
    """NUTS draws from p(z), one chain per leading row of ``init_z``.

    ``log_density(z)`` takes z of shape (chains, N, L) and returns (log p(z)
    per chain, shape (chains,), and its gradient in z, same shape as z).
    ``init_z`` (chains, N, L) is where the chains start.

    ``compile``: True compiles the recorded steps (``recording.record``),
    False runs the recordings uncompiled, "auto" compiles when ``chains x
    (warmup + samples)`` reaches ``recording.AUTO_COMPILE_ITERATIONS``,
    where compiling was measured to pay back. ``recorded`` carries
    recordings from run to run (:func:`build_kernel`).

    Returns (draws of shape (chains, samples, N, L), statistics of the kept
    iterations, each of shape (chains, samples): ``acceptance_rate``,
    ``tree_depth``, ``n_steps``, ``diverging``, ``energy``, ``step_size``).
    """
    compile = resolve_compile(compile, len(init_z) * (warmup + samples), init_z.device)
    state = init(init_z, log_density)
    kernel = build_kernel(log_density, state, seed, max_tree_depth, compile, recorded)
    with tqdm(total=warmup + samples, disable=not progress, desc="NUTS", unit="it") as bar:
        state, step_size, metric = window_adaptation(step, kernel, state, warmup, bar)
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
