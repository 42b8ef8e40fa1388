import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.plumbing.registry import register_model

from .base import LatentVariableModel


@register_model("linear_gaussian")
class LinearGaussian(LatentVariableModel):
    """Probabilistic PCA: p(z) = N(0, I_K), p(x | z) = N(x; W z + b, sigma^2 I_D).

    The ground truth every inference method is tested against, because
    everything is closed-form (Tipping & Bishop 1999):

    - marginal   p(x) = N(x; b, C), C = W W^T + sigma^2 I
    - posterior  p(z | x) = N(z; P^-1 W^T (x - b) / sigma^2, P^-1), with
      precision P = I + W^T W / sigma^2
    - maximum likelihood (``maximum_likelihood``): b = mean of x,
      W = U_K (L_K - sigma^2 I)^1/2 R for any rotation R, sigma^2 = the mean
      of the D - K smallest eigenvalues of the sample covariance.

    ``hidden_dims`` is accepted for a uniform constructor and ignored.
    """

    binary_data = False

    def __init__(self, data_dim, latent_dim=2, hidden_dims=()):
        super().__init__(data_dim, latent_dim, ())
        self.weight = nn.Parameter(0.1 * torch.randn(data_dim, latent_dim))
        self.bias = nn.Parameter(torch.zeros(data_dim))
        # sigma = softplus(raw) keeps the noise positive; raw = 0.5413 gives sigma = 1
        self.raw_noise = nn.Parameter(torch.tensor(math.log(math.e - 1)))

    @property
    def noise(self):
        """sigma, the observation noise standard deviation."""
        return F.softplus(self.raw_noise)

    def likelihood(self, z):
        return dist.Normal(z @ self.weight.T + self.bias, self.noise).to_event(1)

    def marginal(self):
        """p(x) = N(b, W W^T + sigma^2 I), the exact marginal likelihood."""
        eye = torch.eye(self.data_dim, device=self.weight.device)
        return dist.MultivariateNormal(self.bias, self.weight @ self.weight.T + self.noise**2 * eye)

    def log_marginal(self, x):
        """Exact log p(x) per row of ``x`` (nats)."""
        return self.marginal().log_prob(x)

    def exact_posterior(self, x):
        """p(z | x) = N(P^-1 W^T (x - b) / sigma^2, P^-1), P = I + W^T W / sigma^2."""
        var = self.noise**2
        precision = torch.eye(self.latent_dim, device=x.device) + self.weight.T @ self.weight / var
        covariance = torch.linalg.inv(precision)
        mean = (x - self.bias) @ self.weight @ covariance.T / var
        return dist.MultivariateNormal(mean, covariance_matrix=covariance)

    @staticmethod
    def maximum_likelihood(x, latent_dim):
        """Closed-form ML estimate (W, b, sigma) of Tipping & Bishop (1999), W up to rotation."""
        b = x.mean(0)
        covariance = torch.cov((x - b).T, correction=0)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        var = eigenvalues[latent_dim:].mean()
        w = eigenvectors[:, :latent_dim] * (eigenvalues[:latent_dim] - var).clamp(min=0).sqrt()
        return w, b, var.sqrt()
