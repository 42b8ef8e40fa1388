"""NUTS's trajectory for every chain in lockstep, grown one leaf at a time.

Each iteration a chain builds its tree by repeated doubling (Hoffman &
Gelman 2014), and each new subtree one leapfrog step at a time, iteratively
as NumPyro does: a leaf is picked by progressive multinomial sampling inside
the subtree, every balanced sub-subtree is checked for a U-turn as its last
leaf is made (against checkpoints of its first leaf's momentum and running
sum), and the subtree stops at its first U-turn or divergence and is then
rejected. Subtrees merge by biased progressive sampling, and the tree stops
at the generalised U-turn criterion (Betancourt 2017), as in Stan and NumPyro.
The leaf step (leapfrog and bookkeeping) and the merge are recorded once
each and, with ``compile``, compiled (:func:`record_steps`): a transition
is a Python loop over one fused call per leaf and one per doubling. A chain
whose tree has stopped takes steps of size zero until the batch's deepest
tree is done.
"""

import functools
import math
from typing import NamedTuple

import torch

from pyro_vae.infer.mcmc.integrators import Leapfrog
from pyro_vae.infer.mcmc.metrics import dot, per_chain, select, velocity
from pyro_vae.infer.recording import record

MAX_ENERGY_ERROR = 1000.0  # a leapfrog step whose energy grows by more than this diverged (Stan's threshold)


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
def checkpoint_masks(leaf, slots, device):
    """For leaf number ``leaf`` of a subtree (from 0), which checkpoint slot
    it fills and which it checks against, as boolean (slots,) masks
    (NumPyro's ``_leaf_idx_to_ckpt_idxs``). An even leaf opens
    sub-subtrees: it is stored in slot popcount(leaf // 2). An odd leaf
    closes one balanced sub-subtree per trailing one bit of its number, each
    begun at a stored leaf: slots popcount(leaf // 2) - trailing + 1 ..
    popcount(leaf // 2)."""
    store, check = torch.zeros(slots, dtype=torch.bool), torch.zeros(slots, dtype=torch.bool)
    top = bin(leaf >> 1).count("1")
    if leaf % 2 == 0:
        store[top] = True
    else:
        trailing = (leaf ^ (leaf + 1)).bit_length() - 1
        check[top - trailing + 1:top + 1] = True
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


class AddLeaf(torch.nn.Module):
    """:func:`add_leaf` with the leapfrog of ``log_density``, over flat
    tensor arguments (a :class:`Subtree`'s fields, then the step, H0, the
    metric, the uniform and the two checkpoint masks): the form
    ``recording.record`` takes."""

    def __init__(self, log_density):
        super().__init__()
        self.leapfrog = Leapfrog(log_density)

    def forward(self, *args):
        n = len(Subtree._fields)
        return tuple(add_leaf(self.leapfrog, Subtree(*args[:n]), *args[n:]))


def _extend_flat(*args):
    """:func:`extend_tree` over flat tensor arguments, returning flat tensors."""
    n, m = len(Tree._fields), len(Subtree._fields)
    tree, sub = extend_tree(Tree(*args[:n]), Subtree(*args[n:n + m]), *args[n + m:])
    return (*tree, *sub)


def record_steps(log_density, z, slots, compile=False):
    """(leaf step, tree merge): :class:`AddLeaf` with the leapfrog of
    ``log_density`` and :func:`extend_tree`, each recorded once
    (``recording.record``) at ``z``'s shapes (chains, N, L) with ``slots``
    checkpoints, the leaf step checked against the Python at a second point.
    Two graphs serve every leaf and every doubling of every transition."""
    chains, n_points, dim = z.shape
    eye = torch.eye(dim, device=z.device, dtype=z.dtype).expand(chains, n_points, dim, dim).contiguous()
    scalar = torch.zeros(chains, device=z.device, dtype=z.dtype)
    yes = torch.ones(chains, dtype=torch.bool, device=z.device)

    def subtree(z, r, grad):  # its first leaf: the leaf is picked, so the check sees its log density
        ckpt = torch.cos(z).expand(slots, *z.shape).contiguous()
        return Subtree(z, r, grad, z, scalar, grad, scalar - math.inf, r, ckpt, 2 * ckpt, 3 * ckpt, yes, ~yes, scalar,
                       scalar, ~yes)

    example = (*subtree(z, torch.cos(3 * z), torch.zeros_like(z)), scalar + 0.1, scalar, eye, scalar + 0.5,
               *checkpoint_masks(0, slots, z.device))
    check = (*subtree(z + 0.1, torch.sin(2 * z), torch.cos(z)), scalar - 0.2, scalar + 1, 2 * eye, scalar + 0.3,
             *checkpoint_masks(3, slots, z.device))
    leaf = record(AddLeaf(log_density).eval(), example, check=check, name="NUTS", compile=compile, stacklevel=5)
    r = torch.cos(3 * z)
    tree = Tree(z, r, z, z, r, z, z, scalar, z, scalar, r, yes, scalar.long(), scalar, scalar, ~yes)
    extend = record(_extend_flat, (*tree, *subtree(z, torch.cos(3 * z), z), yes, scalar + 0.5, eye, ~yes),
                    name="NUTS", compile=compile, stacklevel=5)
    return leaf, extend
