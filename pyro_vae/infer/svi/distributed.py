"""Data-parallel SVI across processes started by ``torchrun``.

    torchrun --standalone --nproc_per_node 2 -m pyro_vae.fit --guide amortized ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; :func:`joined` joins the process group (NCCL on GPUs, Gloo on
CPUs). Every rank holds the whole dataset and the same model and guide; each
epoch rank 0 broadcasts one permutation, each global minibatch of
``--batch-size`` rows is cut into one disjoint shard per rank, and every rank
runs an ordinary ``svi.step`` on its shard.

Why an explicit all-reduce rather than DistributedDataParallel: SVI owns the
backward pass and finds the parameters by tracing the model and guide, so
there is no single module forward for DDP to wrap; the optimizer hook
(:meth:`pyro_vae.infer.svi.optim.Adam.__call__`) sees exactly the parameters SVI is
about to step, after backward, and averages their gradients there.

Shard r of b_r rows has plate scale N / b_r, so its loss is an unbiased
full-data estimate; summing w_r * gradient_r over ranks with w_r = b_r / B
gives exactly the gradient of the single-process loss on the whole global
batch of B rows (global sites such as Bayesian decoder weights, present once
in every rank's loss, keep weight sum_r w_r = 1). The ELBO is therefore on
the full-data scale, as in one process. Sparse gradients (the meanfield
guide's local rows) are all-reduced too, so every rank applies the same
update to every row: each rank owns the rows of its shard for that step,
and all ranks agree on all rows. Only rank 0 writes the run directory.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a rank waits in a collective: the other ranks wait at the closing barrier while rank 0
# alone scores the last epoch and writes the run (figures, the IWAE bound), which can outlast
# torch's defaults (10 minutes under NCCL, 30 under Gloo)
COLLECTIVE_TIMEOUT = timedelta(hours=6)


@dataclass
class Cluster:
    """Where this process stands; ``world_size == 1`` is the ordinary single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device_name: str = "auto"  # this rank's device

    @property
    def active(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, global_idx):
        """This rank's disjoint slice of a global minibatch (sizes differ by at most one)."""
        return global_idx.tensor_split(self.world_size)[self.rank] if self.active else global_idx

    def broadcast(self, tensor):
        """Rank 0's ``tensor`` on every rank (in place)."""
        if self.active:
            dist.broadcast(tensor, src=0)
        return tensor

    def broadcast_modules(self, *modules):
        """Rank 0's parameters and buffers on every rank (ranks start from different seeds)."""
        if self.active:
            with torch.no_grad():
                for module in modules:
                    for tensor in [*module.parameters(), *module.buffers()]:
                        dist.broadcast(tensor, src=0)

    def broadcast_object(self, obj):
        """Rank 0's picklable ``obj`` on every rank; also a barrier."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values):
        """Elementwise sum of a 1-D float tensor over ranks."""
        if self.active:
            dist.all_reduce(values)
        return values

    def reduce_gradients(self, params, weight):
        """Replace each gradient by sum_r weight_r * grad_r over ranks."""
        if not self.active:
            return
        dense = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
        if dense:
            flat = torch.cat([g.reshape(-1) for g in dense]) * weight
            dist.all_reduce(flat)
            for g, reduced in zip(dense, flat.split([g.numel() for g in dense])):
                g.copy_(reduced.view_as(g))
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                p.grad = all_reduce_sparse(p.grad.coalesce() * weight)


def all_reduce_sparse(grad):
    """Sum of a sparse COO gradient over ranks: gather every rank's rows, then coalesce."""
    counts = torch.tensor([grad.indices().shape[1]], device=grad.device)
    sizes = [torch.zeros_like(counts) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, counts)
    largest = int(max(s.item() for s in sizes))
    indices = torch.zeros(grad.indices().shape[0], largest, dtype=torch.long, device=grad.device)
    values = torch.zeros(largest, *grad.values().shape[1:], dtype=grad.dtype, device=grad.device)
    indices[:, : counts.item()] = grad.indices()
    values[: counts.item()] = grad.values()
    all_indices = [torch.zeros_like(indices) for _ in sizes]
    all_values = [torch.zeros_like(values) for _ in sizes]
    dist.all_gather(all_indices, indices)
    dist.all_gather(all_values, values)
    rows = [(i[:, : n.item()], v[: n.item()]) for i, v, n in zip(all_indices, all_values, sizes)]
    return torch.sparse_coo_tensor(torch.cat([r[0] for r in rows], 1), torch.cat([r[1] for r in rows]),
                                   grad.shape).coalesce()


def start(device_name="auto"):
    """Join the torchrun process group if there is one; returns this process's :class:`Cluster`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Cluster(device_name=device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Cluster(rank, world_size, local_rank, device_name)


def stop(cluster):
    if cluster.active and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def joined(device_name="auto"):
    """This process's :class:`Cluster` (:func:`start`) for the ``with`` block; the process group is
    left after it, once every rank has ended the block normally, or at once after an error."""
    cluster = start(device_name)
    try:
        yield cluster
    except BaseException:
        # no barrier: it could pair with another rank's pending collective and hang, while torchrun
        # stops the other ranks when one fails
        stop(cluster)
        raise
    try:
        if cluster.active and dist.is_initialized():
            # a rank that tore its Gloo connections down while rank 0 still evaluated and wrote the run
            # was aborted at exit ("terminate called without an active exception"), about one run in ten
            dist.barrier()
    finally:
        stop(cluster)
