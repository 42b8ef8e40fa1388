"""The generative model p(z) p(x | z) that every inference method shares."""

from contextlib import contextmanager

import pyro
import pyro.distributions as dist
from torch import nn
from torch.func import functional_call

from pyro_vae.nn import data_plate


class LatentVariableModel(nn.Module):
    """p(z) = N(0, I) on R^latent_dim and a likelihood p(x | z) on R^data_dim.

    Subclasses implement :meth:`likelihood`, calling the decoder network
    through :meth:`decode`. The decoder's weights are point estimates
    registered with ``pyro.module``; the model says nothing about how
    p(z | x) will be approximated (an encoder, per-point mean-field Gaussians
    or NUTS all run this same program).

    With ``bayesian_decoder = True`` (``--bayesian-decoder``) the decoder
    weights are random too: theta ~ N(0, I), one site ``decoder.<name>`` per
    weight tensor, drawn once per run of the model and outside the data plate,
    so the ELBO counts KL(q(theta) || p(theta)) once per estimate of the
    full-data bound (once per epoch's worth of data, not once per minibatch).
    Conditioning those sites (``poutine.condition``; ``density.plug_in_values``
    gives E_q[theta]) fixes theta, e.g. to the posterior mean for evaluation.
    ``decoder_values`` holds this run's draw while the program runs; nothing
    outside the program sets it.

    Constructor arguments are the same for every model, so the command line
    and checkpoints can rebuild any of them: ``data_dim``, ``latent_dim`` and
    ``hidden_dims`` (listed from the data side: the decoder runs them in
    reverse, an encoder in order; models without hidden layers ignore them).
    """

    name = None  # set by @register_model
    bayesian_decoder = False
    decoder_values = None

    def __init__(self, data_dim, latent_dim, hidden_dims=()):
        super().__init__()
        if latent_dim < 1:
            raise ValueError("latent_dim must be at least 1")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden_dims = tuple(hidden_dims)

    def prior(self, x):
        """p(z) = N(0, I), one latent vector per row of ``x``."""
        zeros = x.new_zeros(x.shape[0], self.latent_dim)
        return dist.Normal(zeros, 1.0).to_event(1)

    def likelihood(self, z):
        """p(x | z): a distribution with event shape (data_dim,)."""
        raise NotImplementedError

    def decode(self, z):
        """The decoder network at z, with this run's weights: the point
        estimates, or theta when the decoder is Bayesian."""
        if self.decoder_values is None:
            return self.decoder(z)
        return functional_call(self.decoder, self.decoder_values, (z,))

    def decoder_prior(self):
        """p(theta) = N(0, I) for each decoder weight tensor, by parameter name."""
        return {name: dist.Normal(p.new_zeros(p.shape), 1.0).to_event(p.dim())
                for name, p in self.decoder.named_parameters()}

    @contextmanager
    def weights(self):
        """Register point-estimate weights, or draw theta ~ p(theta) for this run.
        A model that overrides ``forward`` opens this around its program, as
        :meth:`forward` does, so that ``--bayesian-decoder`` reaches it."""
        if not self.bayesian_decoder:
            pyro.module(self.name, self)
            yield
            return
        self.decoder_values = {name: pyro.sample(f"decoder.{name}", prior)
                               for name, prior in self.decoder_prior().items()}
        try:
            yield
        finally:
            self.decoder_values = None

    def forward(self, x, idx=None, num_data=None):
        """The Pyro model: z_i ~ p(z), x_i ~ p(x | z_i) for the rows ``idx``."""
        with self.weights(), data_plate(x, idx, num_data):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)
