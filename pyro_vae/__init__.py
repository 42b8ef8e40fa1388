"""pyro_vae: deep latent-variable models as Pyro model/guide pairs.

The same generative model p(z) p(x | z) can be inferred three ways:
an amortized encoder q(z | x) (a VAE), a per-datapoint mean-field Gaussian
(classical variational Bayes), and NUTS. See README.md.
"""

__version__ = "0.1.0"
