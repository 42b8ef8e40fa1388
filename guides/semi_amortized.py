import pyro
import pyro.distributions as dist
import torch

from pyro_vae.nn import data_plate
from pyro_vae.program.estimators import log_weights
from pyro_vae.infer.local_fit import fixed_model, refine
from pyro_vae.plumbing.registry import register_guide

from .amortized import AmortizedGuide


@register_guide("semi_amortized")
class SemiAmortizedGuide(AmortizedGuide):
    """q_K(z | x) = N(m_K, diag s_K^2): the encoder's q_0(z | x) = N(mu(x),
    diag sigma(x)^2) refined by K Adam steps (``local_steps``, ``local_lr``)
    up the point's ELBO with the decoder fixed (semi-amortized variational
    inference: Kim, Wiseman, Miller, Sontag & Rush 2018; Krishnan, Liang &
    Hoffman 2018).

    The variant built here stops gradients through the refinement (Kim et
    al.'s SA-VAE without backpropagating through the K steps; Krishnan et
    al.'s scheme): the decoder trains on the refined ELBO
    E_{q_K}[log p(x, z) - log q_K(z)], the encoder on its own ELBO
    E_{q_0}[log p(x, z) - log q_0(z)] with the decoder held fixed. The
    encoder's term enters the SVI loss as a ``pyro.factor`` whose value is 0
    and whose gradient is that of -ELBO(q_0), so the reported loss is the
    refined bound alone. New points get the same: the encoder, then K steps.
    """

    local_steps = 10
    local_lr = 0.1
    local_particles = 1  # draws per refinement step (see MeanFieldGuide)

    def refined(self, x, q0, fixed=None):
        """q_K(z | x): ``q0`` refined at this guide's settings."""
        return self.refine(self.model[0], x, q0, steps=self.local_steps, lr=self.local_lr,
                           particles=self.local_particles, fixed=fixed)

    @classmethod
    def refine(cls, model, x, q0, *, steps=None, lr=None, particles=None, fixed=None):
        """q_K(z | x) = N(m_K, diag s_K^2) after ``steps`` Adam steps (``lr``, ``particles``
        reparameterised draws a step; each defaulting to the class's setting) from ``q0``, up each
        point's ELBO under ``model`` with its weights (and global values ``fixed``) held fixed."""
        # "is None", not "or": zero steps is a request (the encoder's q itself), not a missing setting
        steps = cls.local_steps if steps is None else steps
        lr = cls.local_lr if lr is None else lr
        particles = cls.local_particles if particles is None else particles
        loc, log_scale = refine(model, x, q0.mean, q0.stddev.log(), steps, lr, particles, fixed)
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def __init__(self, model, num_data, hidden_dims=(400,)):
        super().__init__(model, num_data, hidden_dims)
        self.model = [model]  # a list hides it from nn.Module: not this guide's parameters

    def posterior(self, x, idx=None, key=None, fixed=None):
        """q_K(z | x): the encoder's q, then K refinement steps."""
        return self.refined(x, super().posterior(x), fixed)

    def forward(self, x, idx=None, num_data=None):
        pyro.module(self.name, self)
        q0 = super().posterior(x)
        q = self.refined(x, q0)
        with fixed_model(self.model[0]):  # the encoder's ELBO moves the encoder only
            encoder_elbo = log_weights(self.model[0], q0, x, q0.rsample())
        with data_plate(x, idx, num_data):
            pyro.factor("encoder_elbo", -(encoder_elbo - encoder_elbo.detach()), has_rsample=True)
            pyro.sample("z", q)
