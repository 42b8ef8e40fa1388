"""Record the gradients every SVI step of a real ``fit_svi`` run hands to Adam, without moving the
parameters: ``python tests/svi_gradients.py OUT SEED GUIDE:STEPS...`` in one process, or under ``torchrun``
on several ranks (tests/test_promises.py compares the two).

The run trains on 64 digits in one global minibatch of 64, so every epoch is one step on the same
global batch at the same parameters (Adam's update is switched off): ``STEPS`` epochs give ``STEPS``
draws of the step's gradient, after the ranks' all-reduce. The weights start from one fixed seed,
the noise from ``SEED`` (rank r: ``SEED + r``, as every run). Rank 0 saves them to
``OUT/GUIDE/gradients.pt``.

``--guide amortized_common_noise`` is the amortized guide with the noise of each training row fixed
(z_i = mu(x_i) + sigma(x_i) eps_i, eps_i a table the same in every process): a stochastic guide whose
every row sees the same draw whichever rank holds it, so sharding must change nothing.
"""

import os
import sys
from unittest import mock

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.nn import data_plate
from pyro_vae.runs.config import EvaluationSettings, FitConfig
import pyro_vae.runs.fit_svi as fit_svi_module
from pyro_vae.infer.svi import distributed
from pyro_vae.runs.fit_svi import fit_svi
from pyro_vae.guides.amortized import AmortizedGuide
from pyro_vae.plumbing.registry import register_guide

NUM_TRAIN = 64
NOISE = torch.randn(NUM_TRAIN, 2, generator=torch.Generator().manual_seed(123))


class FixedNoiseNormal(dist.Normal):
    """N(loc, scale) whose reparameterised draw is loc + scale * eps for a given eps."""

    def __init__(self, loc, scale, eps):
        super().__init__(loc, scale)
        self.eps = eps

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return FixedNoiseNormal(self.loc.expand(batch_shape), self.scale.expand(batch_shape),
                                self.eps.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        assert not sample_shape
        return self.loc + self.scale * self.eps


@register_guide("amortized_common_noise")
class CommonNoiseGuide(AmortizedGuide):
    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        q = self.posterior(x)
        with data_plate(x, idx, num_data):
            pyro.sample("z", FixedNoiseNormal(q.base_dist.loc, q.base_dist.scale, NOISE[idx]).to_event(1))


def record_gradients(guide, steps, out, seed=0):
    grads, losses = [], []

    def record(optimizer, *args, **kwargs):  # torch.optim.Adam.step: note the gradient, leave the parameters
        grads.append(torch.cat([p.grad.reshape(-1) for p in optimizer.param_groups[0]["params"]]))

    config = FitConfig(dataset="digits", num_train=NUM_TRAIN, num_test=16, binarize="static", latent_dim=2,
                       hidden_dims=(16,), batch_size=NUM_TRAIN, epochs=steps, guide=guide, device="cpu",
                       compile="off", out=out, seed=seed, evaluation=EvaluationSettings(iwae_samples=2, max_examples=4))
    build = fit_svi_module.build

    def build_at_fixed_weights(*args, **kwargs):  # the same initial weights whatever the seed of the noise
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            return build(*args, **kwargs)

    with mock.patch.object(torch.optim.Adam, "step", record), \
            mock.patch.object(fit_svi_module, "build", build_at_fixed_weights):
        result = fit_svi(config, progress=False, log=lambda *a: None)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"gradients": torch.stack(grads), "train_elbo": [m["train_elbo"] for m in result.metrics]},
                   f"{out}/gradients.pt")


if __name__ == "__main__":
    # GUIDE:STEPS pairs, each one run in its own OUT/GUIDE folder; under torchrun the runs share one
    # process group (distributed.start joins it once; its stop would end it after the first run)
    with mock.patch.object(distributed, "stop", lambda cluster: None):
        for run in sys.argv[3:]:
            guide, steps = run.split(":")
            record_gradients(guide, int(steps), f"{sys.argv[1]}/{guide}", int(sys.argv[2]))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
