"""A deterministic guide, q(z | x) = Delta(encoder(x)), so that SVI gradients carry
no Monte Carlo noise and data-parallel runs can be compared with one process exactly."""

import pyro
import pyro.distributions as dist

from pyro_vae.nn import data_plate
from pyro_vae.guides.amortized import AmortizedGuide
from pyro_vae.plumbing.registry import register_guide


@register_guide("delta")
class DeltaGuide(AmortizedGuide):
    def posterior(self, x, idx=None, **unused):
        loc, _ = self.encoder(x).chunk(2, dim=-1)
        return dist.Delta(loc).to_event(1)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data):
            pyro.sample("z", self.posterior(x))
