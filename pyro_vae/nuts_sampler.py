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
Gelman 2014), and each new subtree one leapfrog step at a time, iteratively
as NumPyro does: a leaf is picked by progressive multinomial sampling inside
the subtree, every balanced sub-subtree is checked for a U-turn as its last
leaf is made (against checkpoints of its first leaf's momentum and running
sum), and the subtree stops at its first U-turn or divergence and is then
rejected. Subtrees merge by biased progressive sampling, and the tree stops
at the generalised U-turn criterion (Betancourt 2017), as in Stan and NumPyro.
The leaf step (leapfrog and bookkeeping, two leaves a call) and the merge
are recorded once each and, with ``compile``, compiled by Inductor
(:func:`record_steps`): a transition is a Python loop over a handful of
fused calls, whatever the depth.

Warm-up is Stan's: the step size by dual averaging towards a mean acceptance
statistic of 0.8 (Hoffman & Gelman 2014, algorithm 5); the mass matrix
blocks from the covariance of each point's draws, regularised as in Stan,
over windows of 25, 50, 100, ... iterations between an initial buffer of 75
and a final one of 50; after each window the step size is found afresh.

All random numbers come from one ``torch.Generator`` seeded by ``seed``: the
same seed on the same device gives the same draws.
"""

import functools
import math
import warnings
from typing import NamedTuple

import torch
import torch._inductor
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_map
from tqdm import tqdm

MAX_ENERGY_ERROR = 1000.0  # a leapfrog step whose energy grows by more than this diverged (Stan's threshold)
TARGET_ACCEPT = 0.8
# sample(compile="auto") compiles from this many chain-iterations on: on 2 CPU cores compiling the
# three steps of a small model cost about 21 s in a fresh process (3 s with Inductor's on-disk cache)
# and saved about 16 ms an iteration (README, "NUTS on torch.compile")
AUTO_COMPILE_ITERATIONS = 1000


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
    kinetic energy) after it."""

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


def record(function, example, check, sampler, compile=False, stacklevel=3):
    """``function`` recorded once at the inputs ``example`` as a graph of
    the ATen operations it runs (``make_fx``: the gradient's operations
    included, the Python that produced them gone), and with ``compile``
    compiled by Inductor (:func:`_inductor`: fused kernels, no per-operation
    dispatch, and none of ``torch.compile``'s guards and wrappers around each
    call, which cost 40 us of the 110 us a compiled leapfrog call took). Tensors it reads without taking them as inputs (a
    decoder's weights, a data buffer) enter the graph by reference: changed
    in place, the recording sees the new values, so one recording serves
    every call with the same shapes.

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
        compiled = _inductor(graph, _distinct(example))
        if _agree(compiled(*(check or example)), graph(*(check or example))):
            return compiled
        reason = "the compiled graph disagrees with the recording"
    except Exception as error:  # noqa: BLE001 -- no compiler, an unsupported operation: the recording still runs
        reason = str(error).strip().splitlines()[0]
    warnings.warn(f"{sampler} runs uncompiled: compiling failed ({reason})", stacklevel=stacklevel)
    return graph


def _inductor(graph, example):
    """``graph`` compiled by Inductor (``torch._inductor.standalone_compile``,
    for the shapes of ``example``), the tensors it reads by reference (a
    decoder's weights, a data buffer) lifted to inputs and passed at every
    call: so they stay by reference, and Inductor's on-disk graph cache,
    which cannot key on captured tensors, serves a second process."""
    lifted = torch.fx.Graph()
    lifted.output(lifted.graph_copy(graph.graph, {}))
    placeholders = [node for node in lifted.nodes if node.op == "placeholder"]
    constants = []
    for node in [node for node in lifted.nodes if node.op == "get_attr"]:
        value = getattr(graph, node.target)
        if not isinstance(value, torch.Tensor):
            continue
        with lifted.inserting_after(placeholders[-1]):
            placeholders.append(lifted.placeholder(f"captured_{len(constants)}"))
        placeholders[-1].meta = dict(node.meta)
        node.replace_all_uses_with(placeholders[-1])
        lifted.erase_node(node)
        constants.append(value)
    module = torch.fx.GraphModule(graph, lifted)
    compiled = torch._inductor.standalone_compile(module, [*example, *constants],
                                                  dynamic_shapes="from_example_inputs")
    return lambda *args: compiled(*args, *constants)


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
    return turns(r_left, r_right, velocity(r_sum - 0.5 * (r_left + r_right), inverse_mass))


def turns(r_left, r_right, v_sum):
    """:func:`is_turning` given the velocity ``v_sum`` of the momenta's sum without half of each end."""
    return (dot(r_left, v_sum) <= 0) | (dot(r_right, v_sum) <= 0)


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
    """A new subtree of every chain, grown one leaf (leapfrog step) at a time
    from an end of the tree; every field (chains, ...) except the
    checkpoints (slots, chains, N, L)."""

    z: torch.Tensor  # its last leaf, the trajectory's new end
    r: torch.Tensor
    grad: torch.Tensor
    pick_z: torch.Tensor  # the leaf picked so far, in proportion to exp(H0 - H)
    pick_log_p: torch.Tensor
    pick_grad: torch.Tensor
    log_weight: torch.Tensor  # log of the sum over its leaves of exp(H0 - H); -inf before the first
    r_sum: torch.Tensor  # the sum of its leaves' momenta
    checkpoint_r: torch.Tensor  # momentum, its velocity and the running sum's velocity at the
    checkpoint_v: torch.Tensor  # first leaf of each balanced sub-subtree still open
    checkpoint_v_sum: torch.Tensor
    building: torch.Tensor  # still growing: the tree was active and no leaf diverged or turned
    failed: torch.Tensor  # a leaf diverged or a sub-subtree turned: the subtree is rejected
    n_steps: torch.Tensor
    accept_sum: torch.Tensor
    diverged: torch.Tensor


def open_subtree(tree, forward, checkpoints):
    """An empty :class:`Subtree` at the tree's end in each chain's direction
    ``forward``. ``checkpoints`` (slots, chains, N, L) are reused as they
    are: a leaf only reads a slot that an earlier leaf of its own subtree wrote."""
    z, r, grad = select(forward, (tree.right_z, tree.right_r, tree.right_grad),
                        (tree.left_z, tree.left_r, tree.left_grad))
    zeros, no = torch.zeros_like(tree.log_weight), torch.zeros_like(tree.active)
    return Subtree(z, r, grad, z, tree.log_p, grad, torch.full_like(zeros, -math.inf), torch.zeros_like(r),
                   checkpoints, checkpoints, checkpoints, tree.active, no, zeros, zeros, no)


@functools.lru_cache(maxsize=4096)
def checkpoint_masks(first, count, slots, device):
    """For leaves ``first`` .. ``first + count - 1`` of a subtree (numbered
    from 0), which checkpoint slot each fills and which it checks against, as
    boolean (count, slots) masks (NumPyro's ``_leaf_idx_to_ckpt_idxs``). An
    even leaf opens sub-subtrees: it is stored in slot popcount(leaf // 2).
    An odd leaf closes one balanced sub-subtree per trailing one bit of its
    number, each begun at a stored leaf: slots popcount(leaf // 2) -
    trailing + 1 .. popcount(leaf // 2)."""
    store, check = torch.zeros(count, slots, dtype=torch.bool), torch.zeros(count, slots, dtype=torch.bool)
    for i, leaf in enumerate(range(first, first + count)):
        top = bin(leaf >> 1).count("1")
        if leaf % 2 == 0:
            store[i, top] = True
        else:
            trailing = (leaf ^ (leaf + 1)).bit_length() - 1
            check[i, top - trailing + 1:top + 1] = True
    return store.to(device), check.to(device)


def add_leaf(leapfrog, sub, step, energy0, inverse_mass, uniform, store, check):
    """One more leaf of the :class:`Subtree` ``sub``: a leapfrog step of
    signed size ``step`` (zero where the chain has stopped building) from its
    end, then the bookkeeping recursive NUTS does at a leaf, done iteratively
    as in NumPyro:

    - the leaf's weight exp(H0 - H); a divergence if H - H0 > 1000;
    - progressive multinomial sampling: the picked leaf moves to the new one
      with probability w_leaf / w_subtree (on ``uniform``), which picks each
      leaf in proportion to its weight;
    - the U-turn checks of every balanced sub-subtree that this leaf closes,
      against the checkpoints ``check``, its first leaf's momentum and
      running sum (Betancourt 2017's criterion); an even leaf is stored in
      the checkpoint ``store``.

    Pure tensor code with no branch on values and fixed shapes, so one
    recording serves every leaf of every depth (:func:`record_steps`)."""
    building = sub.building
    z, r, grad, log_p, kinetic = leapfrog(sub.z, sub.r, sub.grad, step * building, inverse_mass)
    v = velocity(r, inverse_mass)
    log_w = torch.nan_to_num(energy0 + log_p - kinetic, nan=-math.inf)  # H0 - H
    diverged = building & (log_w < -MAX_ENERGY_ERROR)
    log_weight = torch.where(building, torch.logaddexp(sub.log_weight, log_w), sub.log_weight)
    move = building & (uniform.log() < log_w - log_weight)
    pick = select(move, (z, log_p, grad), (sub.pick_z, sub.pick_log_p, sub.pick_grad))
    r_sum = torch.where(per_chain(building, r), sub.r_sum + r, sub.r_sum)
    v_sum = velocity(r_sum, inverse_mass)
    slot = store.view(-1, *[1] * r.dim())
    checkpoint_r = torch.where(slot, r, sub.checkpoint_r)
    checkpoint_v = torch.where(slot, v, sub.checkpoint_v)
    checkpoint_v_sum = torch.where(slot, v_sum, sub.checkpoint_v_sum)
    # the sub-subtree from a checkpointed leaf to this one: its momenta sum to r_sum - r_sum_ckpt + r_ckpt
    v_sub = v_sum - checkpoint_v_sum + 0.5 * (checkpoint_v - v)
    turning = (turns(checkpoint_r, r, v_sub) & check.view(-1, 1)).any(0)
    stops = diverged | (building & turning)
    return Subtree(z, r, grad, *pick, log_weight, r_sum, checkpoint_r, checkpoint_v, checkpoint_v_sum,
                   building & ~stops, sub.failed | stops, sub.n_steps + building,
                   sub.accept_sum + building * log_w.exp().clamp(max=1), sub.diverged | diverged)


def extend_tree(tree, sub, forward, uniform, inverse_mass, next_forward):
    """Merge the finished subtree ``sub``, grown in direction ``forward``,
    into ``tree``, and open the next subtree in direction ``next_forward``
    (:func:`open_subtree`); returns both. A failed subtree is rejected and the tree stops growing.
    Otherwise the tree's draw moves to the subtree's pick with probability
    min(1, w_subtree / w_tree) (biased progressive sampling, on
    ``uniform``), the subtree's last leaf becomes the tree's end, and the
    tree stops if the whole trajectory now turns. Every leaf built counts
    in the acceptance statistic, the last one of a failed subtree too, as in Stan."""
    ok = tree.active & ~sub.failed
    move = ok & (uniform.log() < sub.log_weight - tree.log_weight)
    z, log_p, grad = select(move, (sub.pick_z, sub.pick_log_p, sub.pick_grad), (tree.z, tree.log_p, tree.grad))
    log_weight = torch.where(ok, torch.logaddexp(tree.log_weight, sub.log_weight), tree.log_weight)
    end = (sub.z, sub.r, sub.grad)
    right = select(ok & forward, end, (tree.right_z, tree.right_r, tree.right_grad))
    left = select(ok & ~forward, end, (tree.left_z, tree.left_r, tree.left_grad))
    r_sum = torch.where(per_chain(ok, sub.r), tree.r_sum + sub.r_sum, tree.r_sum)
    active = ok & ~is_turning(left[1], right[1], r_sum, inverse_mass)
    tree = Tree(*left, *right, z, log_p, grad, log_weight, r_sum, active, tree.depth + ok,
                tree.n_steps + sub.n_steps, tree.accept_sum + sub.accept_sum, tree.diverging | sub.diverged)
    return tree, open_subtree(tree, next_forward, sub.checkpoint_r)


class AddLeaves(torch.nn.Module):
    """``count`` calls of :func:`add_leaf` in a row, with the leapfrog of
    ``log_density``, over flat tensor arguments (a :class:`Subtree`'s
    fields, then the step, H0, the metric, and per leaf the uniforms and the
    checkpoint masks, each with a leading ``count`` axis): the form
    :func:`record` takes. Two leaves a call halve the calls, and a U-turn
    shows only at odd leaves anyway."""

    def __init__(self, log_density, count):
        super().__init__()
        self.leapfrog = Leapfrog(log_density)
        self.count = count

    def forward(self, *args):
        n = len(Subtree._fields)
        sub, (step, energy0, inverse_mass, uniforms, stores, checks) = Subtree(*args[:n]), args[n:]
        for i in range(self.count):
            sub = add_leaf(self.leapfrog, sub, step, energy0, inverse_mass, uniforms[i], stores[i], checks[i])
        return tuple(sub)


def _extend_flat(*args):
    """:func:`extend_tree` over flat tensor arguments, returning flat tensors."""
    n, m = len(Tree._fields), len(Subtree._fields)
    tree, sub = extend_tree(Tree(*args[:n]), Subtree(*args[n:n + m]), *args[n + m:])
    return (*tree, *sub)


def record_steps(log_density, z, slots, compile=False):
    """({1: one leaf step, 2: two leaf steps}, tree merge): :class:`AddLeaves`
    with the leapfrog of ``log_density`` and :func:`extend_tree`, each
    recorded once (:func:`record`) at ``z``'s shapes (chains, N, L) with
    ``slots`` checkpoints, the leaf steps checked against the Python at a
    second point. Three graphs serve every leaf and every doubling of every
    transition."""
    chains, n_points, dim = z.shape
    eye = torch.eye(dim, device=z.device, dtype=z.dtype).expand(chains, n_points, dim, dim).contiguous()
    scalar = torch.zeros(chains, device=z.device, dtype=z.dtype)
    yes = torch.ones(chains, dtype=torch.bool, device=z.device)

    def subtree(z, r, grad):  # its first leaf: the leaf is picked, so the check sees its log density
        ckpt = torch.cos(z).expand(slots, *z.shape).contiguous()
        return Subtree(z, r, grad, z, scalar, grad, scalar - math.inf, r, ckpt, 2 * ckpt, 3 * ckpt, yes, ~yes, scalar,
                       scalar, ~yes)

    leaves = {}
    for count in (1, 2):
        uniforms = torch.full((count, chains), 0.5, device=z.device, dtype=z.dtype)
        example = (*subtree(z, torch.cos(3 * z), torch.zeros_like(z)), scalar + 0.1, scalar, eye, uniforms,
                   *checkpoint_masks(0, count, slots, z.device))
        check = (*subtree(z + 0.1, torch.sin(2 * z), torch.cos(z)), scalar - 0.2, scalar + 1, 2 * eye, 0.6 * uniforms,
                 *checkpoint_masks(count, count, slots, z.device))
        leaves[count] = record(AddLeaves(log_density, count).eval(), example, check, "NUTS", compile, stacklevel=5)
    r = torch.cos(3 * z)
    tree = Tree(z, r, z, z, r, z, z, scalar, z, scalar, r, yes, scalar.long(), scalar, scalar, ~yes)
    extend = record(_extend_flat, (*tree, *subtree(z, torch.cos(3 * z), z), yes, scalar + 0.5, eye, ~yes), None,
                    "NUTS", compile, stacklevel=5)
    return leaves, extend


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
    """What a transition needs besides the state: the leapfrog (Python, for
    the step-size heuristic), the recorded leaf steps and tree merge
    (:func:`record_steps`), the random stream and the depth cap."""

    leapfrog: object
    add_leaves: dict  # leaves a call -> the recorded step
    extend: object
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
    """A :class:`Kernel` for ``log_density``: the leaf step and the tree
    merge recorded at ``state``'s shapes (compiled with ``compile``), and one
    ``torch.Generator`` seeded by ``seed``, from which every random number of
    the run is drawn.

    ``recorded``, a dict the caller keeps beside ``log_density``, holds its
    recordings by shape: a second run with it records nothing (compile once,
    for Monte Carlo EM's E-steps, say; the density must read its weights and
    data by reference, as :func:`record` explains)."""
    generator = torch.Generator(device=state.z.device)
    generator.manual_seed(seed)
    recorded = {} if recorded is None else recorded
    key = (tuple(state.z.shape), state.z.dtype, state.z.device, bool(compile), max_tree_depth)
    if key not in recorded:
        recorded[key] = record_steps(log_density, state.z, max_tree_depth, compile)
    return Kernel(Leapfrog(log_density), *recorded[key], generator, max_tree_depth)


def step(kernel, state, step_size, metric):
    """One multinomial NUTS transition of every chain: the tree doubles, in a
    random direction each time, until it stops or reaches the depth cap.
    Each doubling grows a subtree of 2^depth leaves one leapfrog step at a
    time and stops it early once every chain's subtree has diverged or
    turned, as recursive NUTS does. Returns the new :class:`NUTSState` and
    the :class:`NUTSInfo`."""
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
        for first in range(0, 2**depth, 2):
            count = min(2, 2**depth)
            sub = Subtree(*kernel.add_leaves[count](*sub, signed, energy0, metric.inverse_mass,
                                                    uniforms[first:first + count],
                                                    *checkpoint_masks(first, count, slots, z.device)))
            if not sub.building.any():
                break
        next_forward = torch.rand(chains, generator=kernel.generator, **options) < 0.5
        merged = kernel.extend(*tree, *sub, forward, uniforms[-1], metric.inverse_mass, next_forward)
        tree, sub, forward = Tree(*merged[:n_tree]), Subtree(*merged[n_tree:]), next_forward
    info = NUTSInfo(tree.accept_sum / tree.n_steps, tree.depth, tree.n_steps, tree.diverging, energy0)
    return NUTSState(tree.z, tree.log_p, tree.grad), info


# --------------------------------------------------------------------------- warm-up


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


# --------------------------------------------------------------------------- warm-up and sampling


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


def window_adaptation(kernel, state, num_steps, progress=None):
    """Stan's warm-up over ``num_steps`` transitions: dual averaging of the
    step size throughout, the metric re-estimated at the end of each
    adaptation window (and a step size found afresh for it). Returns the
    state, the final (averaged) step size and the metric."""
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
