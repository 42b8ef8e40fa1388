import math

import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae.building_blocks import data_plate
from pyro_vae.local_fit import INIT_SCALE, WarmStarts, fit_local_posterior
from pyro_vae.registry import register_guide


@register_guide("meanfield")
class MeanFieldGuide(nn.Module):
    """q(z_1, ..., z_N) = prod_i N(z_i; m_i, diag s_i^2): one factorised
    Gaussian per training point and no encoder (classical mean-field
    variational Bayes). With the model's decoder weights as point estimates,
    SVI on this guide is variational EM.

    The local parameters m, log s are two ``nn.Embedding(N, latent_dim,
    sparse=True)`` tables indexed by the data plate's subsample indices, so a
    minibatch touches (and Adam updates, lazily, via ``SparseAdam``) only its
    own rows: a step costs the same for N = 60,000 as for N = 600.

    For points outside the training set there are no local parameters;
    :meth:`posterior` without ``idx`` fits fresh ones with the decoder fixed
    (:func:`fit_local_posterior`).
    """

    amortized = False
    init_scale = INIT_SCALE
    WARM_STARTS = 4

    def __init__(self, model, num_data, hidden_dims=()):
        super().__init__()
        self.model = [model]  # a list hides it from nn.Module: not this guide's parameters
        self.num_data = num_data
        self.loc = nn.Embedding(num_data, model.latent_dim, sparse=True)
        self.log_scale = nn.Embedding(num_data, model.latent_dim, sparse=True)
        nn.init.normal_(self.loc.weight, std=0.01)
        nn.init.constant_(self.log_scale.weight, math.log(self.init_scale))
        self.last_fit_steps = None  # Adam steps of the last test-time fit
        self.warm_starts = WarmStarts(self.WARM_STARTS)

    def local_posterior(self, idx):
        """q(z_i) for the training points ``idx``."""
        return dist.Normal(self.loc(idx), self.log_scale(idx).exp()).to_event(1)

    def posterior(self, x, idx=None, key=None, fixed=None):
        """q(z | x): the learned factors for training rows ``idx``; for new
        ``x`` (no ``idx``), the optimum of :func:`fit_local_posterior` under
        the model with its global values ``fixed``.

        With a ``key`` (a handle the caller chooses, such as ``"test"``),
        the fit starts from the last answer stored under that key when it
        was for as many rows, so tracking a slowly changing decoder on the
        same points costs a few windows of steps, not a full fit. At most
        ``WARM_STARTS`` keys are kept, in the state dict, so a resumed run
        repeats them exactly.
        """
        if idx is not None:
            return self.local_posterior(idx)
        init = None if key is None else self.warm_starts.get(key, len(x))
        q, self.last_fit_steps = fit_local_posterior(self.model[0], x, init=init, fixed=fixed)
        if key is not None:
            self.warm_starts.put(key, q)
        return q

    def get_extra_state(self):
        return self.warm_starts.state()

    def set_extra_state(self, state):
        self.warm_starts.load(state)

    def forward(self, x, idx=None, num_data=None):
        if (num_data or len(x)) != self.num_data:
            raise ValueError(f"meanfield guide has local parameters for {self.num_data} training points, "
                             f"not for a dataset of {num_data or len(x)}; use posterior(x) for new data")
        pyro.module(self.name, self)
        with data_plate(x, idx, num_data) as subsample:
            pyro.sample("z", self.local_posterior(subsample))
