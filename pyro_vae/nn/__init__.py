"""Small pieces shared by models, guides and samplers: MLPs, the data plate,
a fast Bernoulli, freezing a model, and a seeded global RNG."""

from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions.utils import broadcast_all
from torch.nn import functional as F


# The processors (``torch.backends.cpu.get_cpu_capability()``) on which :class:`_Softplus` was measured faster
# than ATen's softplus, in every mode: eager with and without autograd, a make_fx recording replayed, and
# that recording compiled by Inductor. On an AVX-512 AMD EPYC, 1 thread, 2000 x 784, it took 0.2 to 0.3
# the time of ATen's (12 ms against 48 ms forward without grad; 16 against 52 ms forward and backward;
# 0.1 to 0.4 at 128 x 400 and 400 x 64): both ATen's kernel and Inductor's code call Sleef's AVX-512
# log1p, which is slow there. Restricted to AVX2 (ATEN_CPU_CAPABILITY=avx2, which Inductor follows too),
# ATen's took 0.65 to 0.9 the time of the fused form in every mode and shape. docs/benchmarks.md has
# the table and the command. On CUDA, ATen's is one kernel where the fused form is seven.
FUSED_SOFTPLUS_CPUS = frozenset({"AVX512"})
# Decided once per process from the processor, not by timing at start-up: a choice that followed the
# machine's load would change a run's figures (the two forms round differently) from one run to the next.
CPU_SOFTPLUS = "fused" if torch.backends.cpu.get_cpu_capability() in FUSED_SOFTPLUS_CPUS else "aten"


class _Softplus(torch.autograd.Function):
    """softplus(x) = log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), d/dx = sigmoid(x).

    The same function as ``F.softplus``, in operations (``log``, ``exp``)
    that are fast where ATen's ``log1p`` is slow (``FUSED_SOFTPLUS_CPUS``).
    ``log`` of 1 + e^-|x| (in (1, 2]) is off from ``log1p`` by at most half
    an ulp of 1, 6e-8: an absolute error, harmless in a sum of log densities."""

    @staticmethod
    def forward(x):
        return x.clamp(min=0) + torch.log(1 + torch.exp(-x.abs()))  # out of place: tracers record the forward

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def _softplus_no_grad(x):
    """softplus(x) = max(x, 0) + log(1 + e^-|x|), for a caller that keeps no autograd graph: the
    steps run in place on one new buffer (two allocations, where the out-of-place form makes seven
    and ATen's one pass calls the slow ``log1p``). Measured faster than both forms on AVX-512 and on
    AVX2 at every shape of ``benchmarks/softplus_speed.py`` (docs/benchmarks.md); ``x`` is left as it was."""
    return x.abs().neg_().exp_().add_(1).log_().add_(x.clamp(min=0))


def needs_grad(*tensors):
    """Whether autograd records an operation on ``tensors`` (grad mode on, and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def softplus(x):
    """log(1 + e^x), elementwise. On CPU: without autograd (evaluation, IWAE, sampling draws)
    :func:`_softplus_no_grad`; with it :class:`_Softplus` on a CPU in ``FUSED_SOFTPLUS_CPUS``, else
    ``F.softplus``, as on CUDA. A recording (make_fx) keeps the form chosen when it was made."""
    if type(x) is not torch.Tensor or x.device.type != "cpu":
        # a tensor subclass, such as the provenance tracking of Pyro's TraceGraph_ELBO: through it an
        # autograd.Function's output loses its gradient (the decoder's first layer went untrained).
        # Not torch.overrides.has_torch_function: that is also true inside make_fx's recording
        return F.softplus(x)
    if not needs_grad(x):
        return _softplus_no_grad(x)
    return _Softplus.apply(x) if CPU_SOFTPLUS == "fused" else F.softplus(x)


class Softplus(nn.Module):
    """``nn.Softplus()`` computed by :func:`softplus`; no state, so checkpoints are unchanged."""

    def forward(self, x):
        return softplus(x)


ACTIVATIONS = {"softplus": Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU}
_hidden_activation = ["softplus"]  # a stack: hidden_activation() pushes while a run's networks are built


@contextmanager
def hidden_activation(name):
    """Inside, :func:`mlp` builds hidden layers with ``ACTIVATIONS[name]``
    (``--activation``): every model and guide made of ``mlp`` follows it
    without an argument of its own."""
    _hidden_activation.append(name)
    try:
        yield
    finally:
        _hidden_activation.pop()


def mlp(sizes, activation=None):
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    ``activation`` (default: the current :func:`hidden_activation`, softplus
    unless set) follows every layer but the last, whose output is left
    unconstrained (logits, locations, log-scales).
    """
    activation = activation or ACTIVATIONS[_hidden_activation[-1]]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def data_plate(x, idx=None, num_data=None):
    """The plate over data points, ``pyro.plate("data", N, subsample=idx)``.

    ``x`` holds the rows ``idx`` of a dataset of ``num_data`` points, so every
    log-density inside the plate is scaled by ``num_data / len(idx)`` and the
    ELBO is an unbiased estimate on the full-data scale. With ``idx`` omitted,
    ``x`` is the whole dataset. Guides open the same plate with the same
    ``idx``, so per-datapoint (local) parameters line up with the model.
    """
    if idx is None:
        if num_data is not None and num_data != len(x):
            raise ValueError("a minibatch of a larger dataset needs its subsample indices idx")
        # no subsample: the scale is the number 1, not a tensor a recording would keep multiplying by
        return pyro.plate("data", len(x), device=x.device)
    if num_data is None:
        raise ValueError("idx given without num_data, the size of the full dataset")
    return pyro.plate("data", num_data, subsample=idx)


class BernoulliLogits(dist.Bernoulli):
    """Bernoulli(logits=l) with log p(x) = x l - softplus(l).

    The same density as ``pyro.distributions.Bernoulli``, whose log_prob goes
    through ``binary_cross_entropy_with_logits`` (log-sigmoid, negations and
    fills): on CPU that elementwise pass over the decoder's output cost as
    much as the decoder's matrix multiply, and this form is about three
    times cheaper (see benchmarks/eval_speed.py). softplus is evaluated
    stably (:func:`softplus`), so x l - softplus(l) loses nothing.
    """

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        if needs_grad(logits, value):
            return value * logits - softplus(logits)
        return (value * logits).sub_(softplus(logits))  # a new tensor of the broadcast shape: one allocation fewer


@contextmanager
def frozen(model):
    """The model with its weights fixed: no gradients, and eval mode (in which
    ``pyro.module`` skips frozen weights instead of warning). Sampling or
    optimising z under a fixed decoder (NUTS, test-time fits) runs inside."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def seeded_global_rng(seed, device):
    """The global RNG, which Pyro's and torch's samplers use, seeded inside and restored after."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            torch.cuda.default_generators[device.index if device.index is not None
                                          else torch.cuda.current_device()].manual_seed(seed)
        torch.random.default_generator.manual_seed(seed)
        yield
