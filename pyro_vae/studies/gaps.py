"""The inference gap and its decomposition (Cremer, Li & Duvenaud 2018), written once for every study.

Per point x_i, with L[q] the ELBO of the amortized q(z | x_i) and L[q*] that of the per-point optimum
q* of the same family (the decoder fixed):

    log p(x) - L[q] = (log p(x) - L[q*]) + (L[q*] - L[q])
    inference gap   = approximation gap  + amortization gap

the approximation gap what the family costs, the amortization gap what sharing one encoder across
points costs. Each gap is taken per point, then averaged, with its standard error over points.
``posterior_comparison``, ``family_gaps`` and ``discrete_comparison`` each bring their own log p(x)
and L's; the arithmetic is here.
"""

from dataclasses import dataclass

import torch

from pyro_vae.program.estimators import mean_and_se


@dataclass(frozen=True)
class Gaps:
    """Per-point log p(x) (``log_px``), L[q] (``elbo_q``) and, where a per-point optimum was fitted,
    L[q*] (``elbo_q_star``), each a tensor (N,) in nats: without L[q*] only the inference gap is
    defined."""

    log_px: torch.Tensor
    elbo_q: torch.Tensor
    elbo_q_star: torch.Tensor | None = None

    def per_point(self):
        """name -> tensor (N,): the inputs, the inference gap and, with L[q*], the approximation and
        amortization gaps."""
        values = {"log_px": self.log_px, "elbo_q": self.elbo_q, "inference_gap": self.log_px - self.elbo_q}
        if self.elbo_q_star is not None:
            values.update(elbo_q_star=self.elbo_q_star, approximation_gap=self.log_px - self.elbo_q_star,
                          amortization_gap=self.elbo_q_star - self.elbo_q)
        return values

    def summary(self, names=None):
        """{name: mean over points, name_se: its standard error} for ``names`` of :meth:`per_point`
        (default all)."""
        values = self.per_point()
        row = {}
        for name in names or values:
            row[name], row[f"{name}_se"] = mean_and_se(values[name])
        return row


def plus_minus(row, name, digits=3):
    """``row[name] ± row[name_se]``, as the reports write a mean and its standard error."""
    return f"{row[name]:.{digits}f} ± {row[name + '_se']:.{digits}f}"
