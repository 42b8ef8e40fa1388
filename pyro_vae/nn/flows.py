"""Normalizing-flow building blocks of the ``flow`` family, from ``pyro.distributions.transforms``.

- :func:`conditional_flow`: N conditional autoregressive transforms of the latent, conditioned on a
  context vector from the encoder: ``iaf`` (conditional affine autoregressive, the inverse
  autoregressive flow of Kingma et al. 2016) or ``spline`` (conditional rational-quadratic spline
  autoregressive, Durkan et al. 2019), each Pyro's own (``conditional_affine_autoregressive``,
  ``conditional_spline_autoregressive``); the last layer of each network starts at zero, so an
  untrained flow is (nearly) the identity and q starts as the encoder's Gaussian.
- :class:`PointwiseARN`: the same masked autoregressive network with one set of weights per data
  point, batched (weights (N, out, in)): Pyro's ``AffineAutoregressive`` / ``SplineAutoregressive``
  built on it are N independent flows in one tensor program, the per-point q* of the family.
- :class:`Flow`: the flow's distribution over z with Monte Carlo ``mean`` and ``variance``
  (a flow has no closed form for them), which the estimators and plots read.

Flow densities are exact: log q(z) = log q0(eps) - sum log |det dT/deps|. A draw's density comes from
the transforms' cache; at any other z (AIS's intermediate states) the autoregressive inverse is
computed, one network pass per latent dimension. Only public pieces of Pyro are read: a conditional
transform's network (``.nn``), and the context a :class:`Flow` records it was conditioned on.
"""

import copy

import torch
import pyro.distributions as dist
from pyro.distributions.transforms import (AffineAutoregressive, SplineAutoregressive,
                                           conditional_affine_autoregressive, conditional_spline_autoregressive)
from pyro.nn.auto_reg_nn import AutoRegressiveNN
from torch import nn
from torch.fx.experimental.proxy_tensor import get_proxy_mode

FLOWS = ("iaf", "spline")
FLOW_LAYERS = 2  # --flow-layers default
SPLINE_BINS = 8
MOMENT_DRAWS = 256  # draws behind a flow's Monte Carlo mean and variance
MOMENT_SEED = 0  # their own generator's seed: a flow's mean is a function of the flow, the global RNG untouched


def _zero_last_layer(arn):
    with torch.no_grad():
        arn.layers[-1].weight.zero_()
        arn.layers[-1].bias.zero_()
    return arn


def conditional_flow(kind, latent_dim, context_dim, layers, hidden):
    """``layers`` conditional transforms of ``kind`` (``iaf`` or ``spline``), an ``nn.ModuleList``."""
    hidden = [max(hidden, latent_dim)]
    if kind == "iaf":
        made = [conditional_affine_autoregressive(latent_dim, context_dim, hidden_dims=hidden) for _ in range(layers)]
    elif kind == "spline":
        made = [conditional_spline_autoregressive(latent_dim, context_dim, hidden_dims=hidden, count_bins=SPLINE_BINS)
                for _ in range(layers)]
    else:
        raise ValueError(f"flow must be one of {', '.join(FLOWS)}, got {kind!r}")
    for transform in made:
        _zero_last_layer(transform.nn)
    return nn.ModuleList(made)


class Flow(dist.TransformedDistribution):
    """q(z) = T_N o ... o T_1 pushing the factorised Gaussian ``base`` forward. ``conditioned_on`` is
    (the conditional transforms, the context) that ``transforms`` are those conditioned at, where
    they are (the ``flow`` guide's q(z | x)), so that per-point copies can be made of them
    (:func:`pointwise_flow`). ``mean`` and ``variance`` are Monte Carlo estimates from ``MOMENT_DRAWS``
    draws made with a generator of their own seeded with ``MOMENT_SEED`` (computed once)."""

    arg_constraints = {}
    last_draw = None  # the last value sample or rsample returned: the one the transforms' cache holds
    _moment_cache = None

    def __init__(self, base, transforms, conditioned_on=None, validate_args=None):
        super().__init__(base, transforms, validate_args=validate_args)
        self.conditioned_on = conditioned_on

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance if _instance is not None else Flow.__new__(Flow))
        new.conditioned_on = self.conditioned_on
        return new

    def sample(self, sample_shape=torch.Size()):
        self.last_draw = super().sample(sample_shape)
        return self.last_draw

    def rsample(self, sample_shape=torch.Size()):
        self.last_draw = super().rsample(sample_shape)
        return self.last_draw

    def log_prob(self, value):
        """Exact log q(z): from the transforms' cache for the last draw, else by their inverse. The inverse
        branches on values (a spline's interval, an autoregressive pass per dimension), so a recording of
        it (``recording.record``: AIS's trajectories) is refused, and the recorder runs the Python."""
        if self.transforms and value is not self.last_draw and get_proxy_mode() is not None:
            raise RuntimeError("a flow's inverse branches on values")
        return super().log_prob(value)

    def _moments(self):
        if self._moment_cache is None:
            base = self.base_dist
            generator = torch.Generator(device=base.mean.device).manual_seed(MOMENT_SEED)
            with torch.no_grad():
                eps = torch.randn((MOMENT_DRAWS, *base.batch_shape, *base.event_shape), generator=generator,
                                  device=base.mean.device, dtype=base.mean.dtype)
                z = base.mean + base.stddev * eps
                # through shallow copies: each keeps its own cache, so the originals' still holds the
                # last draw, whose log_prob then needs no inverse
                for transform in self.transforms:
                    z = copy.copy(transform)(z)
            self._moment_cache = (z.mean(0), z.var(0))
        return self._moment_cache

    @property
    def mean(self):
        return self._moments()[0]

    @property
    def variance(self):
        return self._moments()[1]

    @property
    def stddev(self):
        return self.variance.sqrt()


class PointwiseARN(nn.Module):
    """Pyro's ``AutoRegressiveNN`` (its masks, permutation and output format) with its own weights for
    each point: inputs (..., N, dim) -> parameters (..., N, dim) per point. :meth:`fresh` makes new
    networks (the last layer zero: the identity transform); :meth:`from_conditional` copies a
    ``ConditionalAutoRegressiveNN`` at each point's context (the context's part of the first layer
    folded into that point's biases), so the per-point flows start as the encoder's q(z | x_i)."""

    def __init__(self, dim, param_dims, permutation, masks, weights, biases, f):
        super().__init__()
        self.register_buffer("permutation", permutation)
        self.input_dim, self.param_dims, self.masks, self.f = dim, list(param_dims), masks, f
        self.output_multiplier = sum(param_dims)
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b.detach().clone()) for b in biases])

    @classmethod
    def fresh(cls, num_points, dim, hidden, param_dims):
        template = AutoRegressiveNN(dim, [max(hidden, dim)], param_dims=param_dims)
        layers = template.layers
        weights = [layer.weight.detach().expand(num_points, -1, -1) for layer in layers]
        biases = [layer.bias.detach().expand(num_points, -1) for layer in layers]
        weights[-1], biases[-1] = torch.zeros_like(weights[-1]), torch.zeros_like(biases[-1])
        return cls(dim, param_dims, template.permutation, [layer.mask for layer in layers], weights, biases, template.f)

    @classmethod
    def from_conditional(cls, conditional, context):
        layers, c, n = conditional.layers, conditional.context_dim, len(context)
        first = layers[0].weight.detach() * layers[0].mask
        weights = [first[:, c:].expand(n, -1, -1)] + [layer.weight.detach().expand(n, -1, -1) for layer in layers[1:]]
        biases = [layers[0].bias.detach() + context.detach() @ first[:, :c].T]
        biases += [layer.bias.detach().expand(n, -1) for layer in layers[1:]]
        masks = [layers[0].mask[:, c:]] + [layer.mask for layer in layers[1:]]
        return cls(conditional.input_dim, conditional.param_dims, conditional.permutation, masks, weights, biases,
                   conditional.f)

    def get_permutation(self):
        return self.permutation

    def forward(self, x):
        h = x
        for i, (weight, bias, mask) in enumerate(zip(self.weights, self.biases, self.masks)):
            h = torch.einsum("...ni,noi->...no", h, weight * mask.to(weight)) + bias
            if i < len(self.weights) - 1:
                h = self.f(h)
        h = h.reshape(*x.shape[:-1], self.output_multiplier, self.input_dim)
        if all(p == 1 for p in self.param_dims):
            return torch.unbind(h, dim=-2)
        ends = torch.tensor(self.param_dims).cumsum(0).tolist()
        return tuple(h[..., end - size:end, :] for size, end in zip(self.param_dims, ends))


def _pointwise(kind, arn):
    if kind == "iaf":
        return AffineAutoregressive(arn)
    return SplineAutoregressive(arn.input_dim, arn, count_bins=SPLINE_BINS)


def pointwise_flow(kind, num_points, dim, layers, hidden, start=None):
    """``layers`` per-point autoregressive transforms of ``kind`` (an ``nn.ModuleList`` of Pyro's
    ``AffineAutoregressive`` or ``SplineAutoregressive`` on :class:`PointwiseARN` networks): copies
    of the conditional transforms of ``start`` (a :class:`Flow` from the ``flow`` guide, at its
    points' contexts, its ``conditioned_on``) when given, else fresh ones (the identity)."""
    if kind not in FLOWS:
        raise ValueError(f"flow must be one of {', '.join(FLOWS)}, got {kind!r}")
    if start is not None:
        conditional, context = start.conditioned_on
        return nn.ModuleList(_pointwise(kind, PointwiseARN.from_conditional(t.nn, context)) for t in conditional)
    dims = [1, 1] if kind == "iaf" else [SPLINE_BINS, SPLINE_BINS, SPLINE_BINS - 1, SPLINE_BINS]
    return nn.ModuleList(_pointwise(kind, PointwiseARN.fresh(num_points, dim, hidden, dims)) for _ in range(layers))
