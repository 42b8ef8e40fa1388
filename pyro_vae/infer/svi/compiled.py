"""SVI's step as one recorded, compiled graph per minibatch shape.

``pyro.infer.SVI.step`` runs the model and the guide under Pyro's tracing at
every step, and the tensor operations they produce are the same at every
step with the same shapes. :class:`CompiledSVI` records those operations
once with the project's recorder (``recording.record``): Trace_ELBO's loss,
the surrogate whose gradient is the estimator's (reparameterised or
score-function terms alike, the plate's N / B scale included), and
autograd's backward, as one graph, compiled by Inductor. A step is then
that graph, its gradients handed to the run's own optimizer. Parameters
enter the graph by reference, so the optimizer's in-place updates reach it
(a program that makes new parameter tensors, a ``pyro.param`` after
``pyro.clear_param_store()``, needs a new CompiledSVI; modules' parameters,
which ``pyro.module`` registers, stay the same tensors).

Trace_ELBO reads each log-density as a Python float for the loss it reports
(``trace_elbo.torch_item``) and checks the loss for NaN on the host
(``trace_elbo.warn_if_nan``): a recording would keep the float as a
constant. While recording, :func:`loss_stays_on_device` patches those two
module attributes (pyro-ppl is pinned below 1.10 in ``pyproject.toml``, and
``tests/test_compiled_svi.py`` fails if either name is gone or no longer
used by ``Trace_ELBO``); the loss a step returns is a tensor on the device.

The first step of the first shape runs as plain SVI (it creates the
parameters); the second records, compiles and is checked against plain SVI
at the same random draws. Where the guide's gradients are sparse (the
meanfield guide's per-point rows: the graph would make them dense) or the
recording fails or disagrees, every step is plain SVI, after a one-line
warning. Other shapes (an epoch's last, partial minibatch) run as plain
SVI: no recompile.
"""

import contextlib
import warnings
from unittest import mock

import pyro
import pyro.infer.trace_elbo as trace_elbo
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.infer.recording import record

PATCHED = ("torch_item", "warn_if_nan")  # the names of pyro.infer.trace_elbo that loss_stays_on_device replaces


@contextlib.contextmanager
def loss_stays_on_device():
    """Trace_ELBO without its host reads: ``torch_item`` detaches, ``warn_if_nan`` passes, validation
    (which reads values) is off."""
    detach = lambda value: value.detach() if torch.is_tensor(value) else value  # noqa: E731
    with (pyro.validation_enabled(False), mock.patch.object(trace_elbo, "torch_item", detach),
          mock.patch.object(trace_elbo, "warn_if_nan", lambda value, *args, **kwargs: value)):
        yield


class CompiledSVI:
    """``pyro.infer.SVI`` with ``Trace_ELBO``, each step one compiled graph
    computing exactly SVI's loss and gradients: -ELBO estimated as Trace_ELBO
    estimates it, on the full-data scale. The same ``step(*args)``, ``model``,
    ``guide``, ``optim`` and ``loss``; ``step`` returns the loss as a 0-d
    tensor on the device (plain SVI: a float). ``compile=False`` runs the
    recording uncompiled."""

    def __init__(self, svi, compile=True):
        self.svi, self.model, self.guide, self.optim, self.loss = svi, svi.model, svi.guide, svi.optim, svi.loss
        self.elbo = getattr(svi.loss, "__self__", None)  # SVI keeps the ELBO's bound ``loss`` method
        self.compile = compile
        self.shape = None  # the arguments' shapes the graph is recorded for
        self.graph = None
        self.params = None
        self.fallback = None  # why every step is plain SVI, once that is decided
        if type(self.elbo) is not Trace_ELBO or self.elbo.num_particles != 1:
            self._give_up(f"only Trace_ELBO with one particle is recorded, not {type(self.elbo).__name__}")

    def step(self, *args):
        key = tuple((tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else a for a in args)
        if self.shape is None:
            self.shape = key
        elif self.graph is None and self.fallback is None and key == self.shape:
            self._record(args)
        if self.graph is None or key != self.shape:
            return self.svi.step(*args)
        with torch.no_grad():  # the graph holds the backward pass: autograd need not record it again
            loss, *grads = self.graph(*[a for a in args if torch.is_tensor(a)])
        loss = loss.detach()
        for param, grad in zip(self.params, grads):
            param.grad = grad
        self.optim(self.params)
        for param in self.params:
            param.grad = None
        return loss

    def _loss_and_grads(self, args):
        """Trace_ELBO's loss and the gradient of its surrogate, as ``SVI.step`` computes them."""
        with poutine.trace(param_only=True) as capture:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *args)
        params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        return loss, params, torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)

    def _record(self, args):
        sparse = getattr(self.optim, "names", {}).get("sparse")
        if sparse:
            return self._give_up(f"the guide's gradients are sparse ({', '.join(sparse)})")
        positions = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        found = {}

        def loss_and_grads(*tensors):
            full = list(args)
            for i, tensor in zip(positions, tensors):
                full[i] = tensor
            loss, found["params"], grads = self._loss_and_grads(full)
            return (loss, *grads)

        tensors = tuple(args[i] for i in positions)
        cuda = [t.device for t in tensors if t.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=cuda), loss_stays_on_device():  # the draws of recording and checks
            graph = record(loss_and_grads, tensors, name="SVI", compile=self.compile, stacklevel=6,
                           agrees=lambda candidate: self._agrees(candidate, tensors, args))
        if graph is loss_and_grads:  # the recorder warned why; plain SVI, not Python through the recorder
            self.fallback = "the step could not be recorded"
            return
        self.graph, self.params = graph, found["params"]

    def _agrees(self, graph, tensors, args):
        """The graph against plain Trace_ELBO at the same random draws; the parameters do not move."""
        seed = int(torch.randint(2**31, ()))
        torch.manual_seed(seed)
        loss, _, expected = self._loss_and_grads(args)
        torch.manual_seed(seed)
        with torch.no_grad():
            recorded, *grads = graph(*tensors)
        scale = loss.detach().abs().clamp(min=1.0)
        return bool(((recorded - loss).abs() <= 1e-4 * scale).item()) and all(
            torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max().clamp(min=1.0)))
            for a, b in zip(grads, expected))

    def _give_up(self, reason):
        self.fallback = reason
        warnings.warn(f"SVI runs uncompiled: {reason}", stacklevel=4)
