"""The model's own program, read by every inference method.

- ``density``: the layout of a model's per-point latent sites and log p(x, z), read off its Pyro
  program (``poutine.condition`` + ``trace``), masked and scaled as Pyro scores it;
- ``enumeration``: models whose latents are all discrete, summed exactly;
- ``posteriors``: posteriors over a model's latent sites, as the estimators use them;
- ``estimators``: log weights, the importance-weighted log p(x), the ELBO's terms, active units.
"""
