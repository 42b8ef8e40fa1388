"""One SVI loop for every model and guide.

``make_svi`` builds ``pyro.infer.SVI`` with the run's optimizer and
objective (``objectives.ELBOS``); ``train_epoch`` runs it over one pass of
minibatches. Each step's loss is a one-sample estimate of -ELBO on the
full-data scale (the data plate scales the minibatch by N / B), so
-loss / N is an estimate of the ELBO in nats per example.
"""

import math
import time

import pyro
import torch
from pyro.distributions import is_validation_enabled
from pyro.infer import SVI
from tqdm import tqdm

from pyro_vae.infer.svi.compiled import CompiledSVI
from pyro_vae.infer.svi.distributed import Cluster
from pyro_vae.objectives import make_objective
from pyro_vae.infer.svi.optim import Adam


def make_svi(model, guide, lr, elbo="trace", local_lr=None, clip_norm=None, compile=False, particles=1,
             baseline="none", temperature=None):
    """``SVI(model, guide, Adam(lr), ELBOS[elbo]())`` over a fresh param store;
    with ``compile``, its step recorded and compiled (``CompiledSVI``; "record":
    recorded, not compiled).

    ``local_lr`` is the learning rate of per-datapoint parameters (sparse
    gradients); ``clip_norm`` clips the global gradient norm of the others.
    ``particles`` and ``baseline`` configure the objective
    (``objectives.make_objective``: ``--particles``, ``--baseline``); ``temperature``, a
    ``relaxed.Temperature``, the relaxed objectives' schedule.

    The param store is cleared because ``pyro.module`` returns a stored
    parameter of the same name rather than the module's own: a model built
    earlier in this process would otherwise shadow this one.
    """
    pyro.clear_param_store()
    objective = make_objective(elbo, particles=particles, baseline=baseline, temperature=temperature)
    svi = SVI(model, guide, Adam(lr, local_lr=local_lr, clip_norm=clip_norm), loss=objective)
    return CompiledSVI(svi, compile=compile != "record") if compile else svi


READ_EVERY = 50  # steps between reads of the losses on the host (a NaN is caught this many steps late at most)


class NonFiniteLoss(Exception):
    """An SVI step returned a NaN or infinite loss (``what`` "loss"), or left the parameters
    non-finite ("parameters", ``loss`` nan)."""

    def __init__(self, step, loss, what="loss"):
        super().__init__(f"step {step}: {what} {loss}")
        self.step, self.loss, self.what = step, loss, what


@torch.no_grad()
def parameters_finite():
    """Whether every parameter in Pyro's param store is finite (the unconstrained tensors the
    optimizer updates; one read from the device)."""
    finite = [torch.isfinite(p).all() for _, p in pyro.get_param_store().named_parameters()]
    return not finite or bool(torch.stack(finite).all())


class Interrupted(Exception):
    """``should_stop()`` asked the loop to stop (a signal arrived)."""


def train_epoch(svi, data, batch_size, progress=True, description="train", should_stop=None, cluster=None):
    """One pass over a fresh permutation of ``data``'s training set.

    Returns ``(train_elbo, seconds)``: the mean over minibatches of the
    per-example ELBO estimate -loss / N (weighted by minibatch size, taken as
    the parameters move through the epoch) and the wall time of the steps.

    Only the first step of the epoch runs with Pyro's argument and support
    validation (when it is enabled, Pyro's default): it catches shape and
    support mistakes, and checking every step cost about 5% of a step.

    The losses stay on the device (a compiled step returns a tensor) and
    are read every ``READ_EVERY`` steps: then the progress bar moves, and a
    non-finite loss raises :class:`NonFiniteLoss` naming its step (the
    parameters have moved on by then: a run restarts from its last
    checkpoint); so do parameters left non-finite at the end of the epoch,
    before it is scored or saved. :class:`Interrupted` is raised after the
    step during which ``should_stop()`` became true.

    With a ``cluster`` of several ranks (see ``pyro_vae.infer.svi.distributed``) each
    global minibatch of ``batch_size`` rows is sharded across ranks, gradients
    are averaged before every step and the loss, stop requests and the
    returned ELBO are those of the whole global minibatch; a last global
    minibatch with fewer rows than ranks is skipped.
    """
    cluster = cluster or Cluster()
    num_data = data.num_train
    validate = is_validation_enabled()
    start = time.perf_counter()
    permutation = cluster.broadcast(torch.randperm(num_data, device=data.device))
    batches = [b for b in permutation.split(batch_size) if len(b) >= cluster.world_size]
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    unread = []  # (step, loss) since the last read: reading a loss on the device waits for it
    with tqdm(batches, desc=description, leave=False, disable=not progress, unit="batch") as bar:
        for step, global_idx in enumerate(bar, start=1):
            idx = cluster.shard(global_idx)
            weight = len(idx) / len(global_idx)
            if cluster.active:
                svi.optim.before_step = lambda params: cluster.reduce_gradients(params, weight)
            with pyro.validation_enabled(validate and step == 1):
                try:
                    loss = svi.step(data.train_batch(idx), idx, num_data)
                except ValueError as error:
                    # a validated step checks the distributions' arguments before any loss exists: parameters
                    # that are not finite (a run resumed from such a checkpoint) fail that check
                    if parameters_finite():
                        raise
                    raise NonFiniteLoss(step, math.nan, "parameters") from error
            stop = should_stop is not None and should_stop()
            if cluster.active:  # every rank sees the same loss and stops at the same step
                reduced = cluster.sum(torch.tensor([float(loss) * weight, float(stop)], dtype=torch.float64))
                loss, stop = reduced[0].item(), reduced[1].item() > 0
            total -= torch.as_tensor(loss, dtype=torch.float64, device=data.device) * (len(global_idx) / num_data)
            unread.append((step, loss))
            if stop or step % READ_EVERY == 0 or step == len(batches):
                raise_if_not_finite(unread, data.device)
                unread = []
                bar.set_postfix(elbo=f"{total.item() / (step * batch_size):.2f}", refresh=False)
            if stop:
                raise Interrupted()
    if not parameters_finite():  # the last step's loss was finite, its update was not
        raise NonFiniteLoss(len(batches), math.nan, "parameters")
    return total.item() / sum(len(b) for b in batches), time.perf_counter() - start


def raise_if_not_finite(losses, device):
    """:class:`NonFiniteLoss` for the first non-finite of ``losses`` [(step, loss)] (floats, or tensors on
    ``device``), read in one go."""
    values = torch.stack([torch.as_tensor(loss, dtype=torch.float64, device=device) for _, loss in losses]).tolist()
    for (step, _), value in zip(losses, values):
        if not math.isfinite(value):
            raise NonFiniteLoss(step, value)
