import math

import pyro
import pyro.distributions as dist
from torch import nn


class DecoderPosterior(nn.Module):
    """q(theta) = prod_j N(theta_j; m_j, s_j^2): a mean-field Gaussian over every
    decoder weight of a model with ``bayesian_decoder = True`` (the "full VB"
    of Kingma & Welling 2013, appendix F). It samples the model's
    ``decoder.<name>`` sites, outside any data plate.

    Means start at the decoder's initial weights (a good scale for each
    layer), standard deviations at ``init_scale``.
    """

    init_scale = 1e-2

    def __init__(self, model):
        super().__init__()
        self.names = [name for name, _ in model.decoder.named_parameters()]
        self.loc = nn.ParameterList([nn.Parameter(p.detach().clone()) for _, p in model.decoder.named_parameters()])
        self.log_scale = nn.ParameterList([nn.Parameter(p.detach().new_full(p.shape, math.log(self.init_scale)))
                                           for _, p in model.decoder.named_parameters()])

    def distributions(self):
        return {name: dist.Normal(loc, log_scale.exp()).to_event(loc.dim())
                for name, loc, log_scale in zip(self.names, self.loc, self.log_scale)}

    def mean(self):
        """E_q[theta], by decoder parameter name (detached)."""
        return {name: loc.detach() for name, loc in zip(self.names, self.loc)}

    def sample(self):
        """One draw theta ~ q(theta), by decoder parameter name."""
        return {name: q.sample() for name, q in self.distributions().items()}

    def forward(self):
        pyro.module("decoder_posterior", self)
        for name, q in self.distributions().items():
            pyro.sample(f"decoder.{name}", q)


class WithDecoderPosterior(nn.Module):
    """A guide for a model with a Bayesian decoder: q(theta) q(z | x), the
    local guide ``local`` (any registered guide) times :class:`DecoderPosterior`."""

    def __init__(self, local, decoder_posterior):
        super().__init__()
        self.local = local
        self.decoder_posterior = decoder_posterior
        self.name = local.name
        self.amortized = getattr(local, "amortized", True)

    def posterior(self, x, idx=None, key=None, fixed=None):
        """The local q(z | x); a test-time fit runs under the plug-in decoder E_q[theta]."""
        if fixed is None:
            fixed = {f"decoder.{name}": value for name, value in self.decoder_posterior.mean().items()}
        return self.local.posterior(x, idx, key=key, fixed=fixed)

    @property
    def last_fit_steps(self):
        return getattr(self.local, "last_fit_steps", None)

    def forward(self, x, idx=None, num_data=None):
        self.decoder_posterior()
        self.local(x, idx, num_data)
