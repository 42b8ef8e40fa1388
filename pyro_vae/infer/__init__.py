"""Samplers and annealed importance sampling over a model's local latents.

- ``mcmc``: Hamiltonian Monte Carlo in the style of blackjax, a module per
  job (metrics, integrators, trees, nuts, adaptation, chees), each sampler an
  ``init`` and a ``step`` over a named state;
- ``ais``: annealed importance sampling and bidirectional Monte Carlo for log p(x).
"""
