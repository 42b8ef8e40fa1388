import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.nn import data_plate, mlp
from pyro_vae.nn.flows import FLOW_LAYERS, Flow, conditional_flow
from pyro_vae.plumbing.registry import register_guide


@register_guide("flow")
class FlowGuide(nn.Module):
    """q(z | x) = the encoder's N(mu(x), diag sigma(x)^2) pushed through ``flow_layers`` conditional
    autoregressive transforms (``--flow iaf``: affine, the inverse autoregressive flow of Kingma et al.
    2016; ``--flow spline``: rational-quadratic splines, Durkan et al. 2019), each conditioned on a
    context h(x) from the same encoder; Pyro's ``conditional_affine_autoregressive`` /
    ``conditional_spline_autoregressive`` (``pyro_vae.nn.flows``). Amortized; log q(z | x) is exact. Its
    per-point optimum q* (``pyro_vae.infer.local_families``) is a flow of the same kind per point."""

    amortized = True
    family = "flow"

    def __init__(self, model, num_data, hidden_dims=(400,), flow="iaf", flow_layers=FLOW_LAYERS):
        super().__init__()
        d = self.latent_dim = model.latent_dim
        self.flow, self.flow_layers = flow, flow_layers
        self.context_dim = max(d, 8)
        self.hidden = max(hidden_dims[-1] if hidden_dims else 4 * d, 2 * d)
        self.encoder = mlp([model.data_dim, *hidden_dims, 2 * d + self.context_dim])
        self.transforms = conditional_flow(flow, d, self.context_dim, flow_layers, self.hidden)

    def posterior(self, x, idx=None, **unused):
        """q(z | x) as a batch of flows (``pyro_vae.nn.flows.Flow``), one per row of ``x``: base
        N(mu(x), diag sigma(x)^2), then the transforms conditioned on h(x)."""
        d = self.latent_dim
        out = self.encoder(x)
        loc, log_scale, context = out[..., :d], out[..., d:2 * d], out[..., 2 * d:]
        base = dist.Normal(loc, torch.exp(log_scale)).to_event(1)
        return Flow(base, [t.condition(context) for t in self.transforms], conditioned_on=(self.transforms, context))

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            pyro.sample("z", self.posterior(x))
