"""One torch optimizer over every parameter that SVI steps.

``pyro.optim.Adam`` builds a separate ``torch.optim.Adam`` for each
parameter tensor and steps them one by one; with the eight tensors of a
two-layer encoder/decoder that Python overhead was the largest single cost of
an SVI step on CPU (see benchmarks/fit_speed.py). :class:`Adam` here is a
``PyroOptim`` (so ``pyro.infer.SVI`` takes it) that keeps a single
``torch.optim.Adam`` over all parameters, adding new ones as SVI meets them,
in the order of their param-store names so that its state is the same in
every process.

Parameters with sparse gradients (the per-datapoint tables of the meanfield
guide, ``nn.Embedding(sparse=True)``) go to a ``torch.optim.SparseAdam``
instead: it updates only the rows a minibatch touched, with their own moment
estimates (lazy Adam), so a local parameter moves only when its data point is
visited, and a step costs the same whatever the dataset size.
"""

import torch
from pyro.optim import PyroOptim
import pyro


class Adam(PyroOptim):
    """Adam (Kingma & Ba 2015) over all parameters in one ``torch.optim.Adam``.

    ``clip_norm``, if given, rescales the gradients of all parameters jointly
    so their global L2 norm is at most ``clip_norm`` before each step.
    ``fused`` is passed to ``torch.optim.Adam``; ``None`` (the default) takes its fused kernel
    wherever torch has one (CPU and CUDA), which updates all dense parameters in one pass: on the
    2-core CPU, 0.39 ms a step against 1.00 ms for torch's CPU default (the per-tensor loop) on the
    MNIST pair's 1.1M parameters, one thread, which took eager ``fit`` from 1.15x to 0.94x a hand-written
    loop per epoch (docs/benchmarks.md, "After the fused Adam step"). ``fused=False``: the per-tensor loop.
    ``local_lr`` is the learning rate of sparse (per-datapoint) parameters,
    whose rows move only when their data point is in the minibatch, once per
    epoch for each row (default: ``lr``).
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), clip_norm=None, fused=None, local_lr=None):
        # PyroOptim's bookkeeping is per parameter; none of it is used here.
        self.options = {"lr": lr, "betas": betas, "fused": fused}
        self.local_options = {"lr": local_lr or lr, "betas": betas}
        self.clip_norm = clip_norm
        self.optimizers = {}  # "dense" -> Adam, "sparse" -> SparseAdam
        self.names = {"dense": [], "sparse": []}  # param-store names, in each optimizer's order
        self._known = set()
        self._pending_state = None
        # called with every parameter in a fixed order, after backward and before
        # the step: data-parallel training averages gradients across ranks here
        self.before_step = None

    def __call__(self, params, *args, **kwargs):
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        if self.before_step is not None:
            self.before_step([p for o in self.optimizers.values() for p in o.param_groups[0]["params"]])
        if self.clip_norm is not None and "dense" in self.optimizers:
            torch.nn.utils.clip_grad_norm_(self.optimizers["dense"].param_groups[0]["params"], self.clip_norm)
        for optimizer in self.optimizers.values():
            optimizer.step()

    def set_lr(self, lr):
        """The learning rate of the dense parameters from the next step on (a schedule's move)."""
        self.options["lr"] = lr
        if "dense" in self.optimizers:
            self.optimizers["dense"].param_groups[0]["lr"] = lr

    def _add(self, params):
        store = pyro.get_param_store()
        for name, p in sorted(((store.param_name(p) or "", p) for p in params), key=lambda item: item[0]):
            kind = "sparse" if p.grad is not None and p.grad.is_sparse else "dense"
            self.names[kind].append(name)
            self._known.add(p)
            if kind not in self.optimizers:
                if kind == "dense":
                    options = dict(self.options)
                    if options["fused"] is None and p.device.type in ("cpu", "cuda") and p.is_floating_point():
                        options["fused"] = True
                    self.optimizers[kind] = torch.optim.Adam([p], **options)
                else:
                    self.optimizers[kind] = torch.optim.SparseAdam([p], **self.local_options)
            else:
                self.optimizers[kind].param_groups[0]["params"].append(p)
        self._apply_pending_state()

    def get_state(self):
        """Tensors and plain values only: ``{"names": {...}, "optimizers": {...}}``."""
        return {"names": {k: list(v) for k, v in self.names.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def set_state(self, state):
        """Restore :meth:`get_state`; applied as soon as the same parameters
        (by name) are registered, i.e. at the first step after a resume."""
        self._pending_state = state
        self._apply_pending_state()

    def _apply_pending_state(self):
        state = self._pending_state
        if state is None or state["names"] != self.names:
            return
        for kind, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][kind])
            # the saved state carries the saved learning rate: the schedule's rate for this epoch wins
            optimizer.param_groups[0]["lr"] = (self.options if kind == "dense" else self.local_options)["lr"]
        self._pending_state = None
