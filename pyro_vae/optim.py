"""One torch optimizer over every parameter that SVI steps.

``pyro.optim.Adam`` builds a separate ``torch.optim.Adam`` for each
parameter tensor and steps them one by one; with the eight tensors of a
two-layer encoder/decoder that Python overhead was the largest single cost of
an SVI step on CPU (see benchmarks/fit_speed.py). :class:`Adam` here is a
``PyroOptim`` (so ``pyro.infer.SVI`` takes it) that keeps a single
``torch.optim.Adam`` over all parameters, adding new ones as SVI meets them,
in the order of their param-store names so that its state is the same in
every process.
"""

import torch
from pyro.optim import PyroOptim
import pyro


class Adam(PyroOptim):
    """Adam (Kingma & Ba 2015) over all parameters in one ``torch.optim.Adam``.

    ``clip_norm``, if given, rescales the gradients of all parameters jointly
    so their global L2 norm is at most ``clip_norm`` before each step.
    ``fused`` is passed to ``torch.optim.Adam`` (``None``: torch's default).
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), clip_norm=None, fused=None):
        # PyroOptim's bookkeeping is per parameter; none of it is used here.
        self.options = {"lr": lr, "betas": betas, "fused": fused}
        self.clip_norm = clip_norm
        self.optimizer = None
        self.names = []  # param-store names, in the optimizer's order
        self._known = set()
        self._pending_state = None

    def __call__(self, params, *args, **kwargs):
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.clip_norm)
        self.optimizer.step()

    def _add(self, params):
        store = pyro.get_param_store()
        named = sorted(((store.param_name(p) or "", p) for p in params), key=lambda item: item[0])
        self.names += [name for name, _ in named]
        self._known.update(p for _, p in named)
        tensors = [p for _, p in named]
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(tensors, **self.options)
        else:
            self.optimizer.param_groups[0]["params"].extend(tensors)
        if self._pending_state is not None and self._pending_state["names"] == self.names:
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    def get_state(self):
        """Tensors and plain values only: ``{"names": [...], "optimizer": state_dict}``."""
        if self.optimizer is None:
            return {"names": [], "optimizer": {}}
        return {"names": list(self.names), "optimizer": self.optimizer.state_dict()}

    def set_state(self, state):
        """Restore :meth:`get_state`; applied as soon as the same parameters
        (by name) are registered, i.e. at the first step after a resume."""
        if not state["names"]:
            return
        self._pending_state = state
        if self.optimizer is not None and self.names == state["names"]:
            self.optimizer.load_state_dict(state["optimizer"])
            self._pending_state = None
