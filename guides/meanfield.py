import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.nn import data_plate
from pyro_vae.infer.local_fit import INIT_SCALE, WarmStarts, fit_local_posterior, refine
from pyro_vae.plumbing.registry import register_guide


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

    With ``local_steps = K`` (``--local-steps``) each minibatch's rows first
    take K Adam steps (``local_lr``) up their ELBO with the decoder fixed,
    from their stored values, and are written back; the SVI step then moves
    the decoder at the refined posteriors (and the rows by one more sparse
    step). That is classical stochastic VB (Hoffman, Blei, Wang & Paisley
    2013): the local parameters near their optimum before each global step.
    Without it each row moves one sparse step per epoch. ``local_particles``
    draws per refinement step: with one, Adam's normalised steps on the
    skewed (chi-square-like) noise of the log-scale gradient settle about 20%
    above the optimal variances (measured on linear_gaussian); eight bring
    them to the optimum at eight times the cost of a step.

    For points outside the training set there are no local parameters;
    :meth:`posterior` without ``idx`` fits fresh ones with the decoder fixed
    (:func:`fit_local_posterior`).
    """

    amortized = False
    init_scale = INIT_SCALE
    WARM_STARTS = 4
    # --local-steps, --local-lr: on MNIST (784-400-50, 3 epochs) test log p(x) -122.7 with 5 steps at 0.1,
    # -111.4 with 20, -100.1 with 50 (amortized: -107.0); at a 240 s budget 50 beat 20 too, and a larger
    # rate did worse (README, "local steps"; benchmarks/local_steps_curve.py)
    local_steps = 50
    local_lr = 0.1
    local_particles = 1  # reparameterised draws per refinement step

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

    @torch.no_grad()
    def refine_rows(self, x, rows):
        """``local_steps`` Adam steps (``local_lr``) on the rows of the
        minibatch with the model fixed, written back into the tables."""
        loc, log_scale = refine(self.model[0], x, self.loc.weight[rows], self.log_scale.weight[rows],
                                self.local_steps, self.local_lr, self.local_particles)
        self.loc.weight[rows] = loc
        self.log_scale.weight[rows] = log_scale

    def forward(self, x, idx=None, num_data=None):
        if (num_data or len(x)) != self.num_data:
            raise ValueError(f"meanfield guide has local parameters for {self.num_data} training points, "
                             f"not for a dataset of {num_data or len(x)}; use posterior(x) for new data")
        pyro.module(self.name, self)
        if self.training and self.local_steps:
            # before the plate opens: the refinement runs the model's program, which opens its own
            self.refine_rows(x, idx if idx is not None else torch.arange(len(x), device=x.device))
        with data_plate(x, idx, num_data) as subsample:
            pyro.sample("z", self.local_posterior(subsample))
