"""A model that turns its likelihood to NaN after a set number of calls (for tests)."""

import torch

from pyro_vae.models.bernoulli_mlp import BernoulliMLP
from pyro_vae.plumbing.registry import register_model


@register_model("nan_after_30")
class NanAfter30(BernoulliMLP):
    calls = 0

    def likelihood(self, z):
        type(self).calls += 1
        p = super().likelihood(z)
        if type(self).calls > 30:
            p.base_dist.logits = p.base_dist.logits * torch.nan
        return p
