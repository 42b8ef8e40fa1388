"""Posteriors over a model's latent sites, as the estimators use them.

An estimator asks a proposal q(z | x) for draws, ``sample(shape)``, and for
their log density, ``log_prob(values)``; for a model with one latent site a
torch ``Distribution`` over it does both (the built-in guides'
``posterior(x)``). For any other program:

- :class:`ProgramPosterior`: q(z | x) is the guide's own program run on the
  rows x, every per-point site it samples: the proposal of a guide without a
  ``posterior`` method, so the test ELBO is the training bound's estimator;
- :class:`FlatPosterior`: a distribution over the flat unconstrained latents
  u (``density.Layout``: NUTS's moment-matched Gaussians, the local fits),
  seen as one over the model's sites: z = T(u), log q(z) = log q(u) -
  log |det dz/du|.

Values are dicts site -> (*sample_shape, N, *event).
"""

import math

import pyro
import pyro.poutine as poutine
import torch

from pyro.infer import config_enumerate

from pyro_vae.program.density import DATA_PLATE, site_log_prob, sum_out

MEAN_DRAWS = 64  # draws behind the mean of a posterior that has no closed-form one


def _per_point(trace):
    """The guide's sample sites in the data plate (observed too: a site conditioned on given values reads
    as observed)."""
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample"
            and any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])}


def flat_mean(values):
    """The per-point means of several sites laid end to end, (N, total size): for plots and active units."""
    if torch.is_tensor(values):  # one site's means: (N,) for a scalar site, (N, 2, L) for a matrix one
        return values.reshape(values.shape[0], -1)
    return torch.cat([value.reshape(value.shape[0], -1).to(torch.get_default_dtype()) for value in values.values()],
                     -1)


class ProgramPosterior:
    """q(z | x) = the guide's program on the rows ``x`` (``guide(x)``: every per-point site it samples
    in the data plate, global sites fixed at ``fixed``). Draws of several particles run the program
    once on the rows repeated."""

    def __init__(self, guide, x, fixed=None):
        self.guide, self.x, self.fixed = guide, x, dict(fixed or {})
        self.event_ranks = None

    def _trace(self, rows, values=None, enumerate_discrete=False):
        program = poutine.condition(self.guide, data={**self.fixed, **(values or {})})
        if enumerate_discrete:
            program = poutine.enum(config_enumerate(program, default="parallel"), first_available_dim=-2)
        with pyro.validation_enabled(False):
            return poutine.trace(program).get_trace(rows)

    def _rows(self, repeats):
        return self.x.repeat(repeats, *[1] * (self.x.dim() - 1)) if repeats > 1 else self.x

    def sample(self, sample_shape=()):
        """Draws of the guide's continuous sites, (*sample_shape, N, *event) each: its discrete sites are
        drawn too and dropped, so the draws are from the marginal q(z | x) = sum_y q(y | x) q(z | x, y)."""
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            sites = _per_point(self._trace(self._rows(math.prod(shape))))
        n = len(self.x)
        return {name: site["value"].reshape(*shape, n, *site["value"].shape[1:]) for name, site in sites.items()
                if not site["fn"].support.is_discrete}

    def log_prob(self, values):
        """log q(z | x) per (*batch, N) at ``values`` (a dict of the continuous sites): the guide's
        discrete sites, if any, summed out in parallel (``poutine.enum``), as the model's are by
        ``density``, so that log p(x, z) - log q(z | x) is a proper importance weight."""
        if self.event_ranks is None:
            with torch.no_grad():
                self.event_ranks = {name: len(site["fn"].event_shape) for name, site in
                                    _per_point(self._trace(self.x)).items()}
        name, first = next(iter(values.items()))
        batch = first.shape[: first.dim() - 1 - self.event_ranks[name]]
        flat = {name: value.reshape(-1, *value.shape[len(batch) + 1:]) for name, value in values.items()}
        sites = _per_point(self._trace(self._rows(math.prod(batch)), flat, enumerate_discrete=True))
        discrete = {name for name, site in sites.items() if site["fn"].support.is_discrete}
        missing = set(sites) - set(values) - discrete
        if missing:
            raise ValueError(f"the guide samples {', '.join(sorted(missing))}, which the model does not have")
        total = sum_out([site_log_prob(site) for site in sites.values()])
        return total.reshape(*batch, len(self.x))

    @property
    def mean(self):
        """Monte Carlo means of the sites (``MEAN_DRAWS`` draws)."""
        return {name: value.float().mean(0) for name, value in self.sample((MEAN_DRAWS,)).items()}


class FlatPosterior:
    """q over the model's sites from ``q_flat``, a distribution over the flat unconstrained latents
    (batch (N,), event (dim,)), through ``layout`` (``density.Layout``)."""

    def __init__(self, q_flat, layout):
        self.q_flat, self.layout = q_flat, layout

    def sample(self, sample_shape=()):
        return self.layout.unflatten(self.q_flat.sample(sample_shape))[0]

    def rsample(self, sample_shape=()):
        return self.layout.unflatten(self.q_flat.rsample(sample_shape))[0]

    def log_prob(self, values):
        u = self.layout.flatten(values)
        _, log_det = self.layout.unflatten(u)
        return self.q_flat.log_prob(u) - log_det

    @property
    def mean(self):
        return self.layout.unflatten(self.q_flat.mean)[0]


def as_posterior(q_flat, layout):
    """``q_flat`` itself where u is the model's one site (nothing changes for the built-in models),
    else a :class:`FlatPosterior`."""
    return q_flat if layout.is_identity() else FlatPosterior(q_flat, layout)


def guide_posterior(guide, x, **options):
    """q(z | x) of ``guide`` for the rows ``x``: its ``posterior(x, **options)`` where it has one that
    covers the model's latents (the built-in guides), else its whole program (:class:`ProgramPosterior`,
    global values ``fixed``): a guide without one, or one whose one-site ``posterior`` covers part of a
    model with several sites (``posterior_is_partial``, set when the run is built)."""
    if hasattr(guide, "posterior") and not getattr(guide, "posterior_is_partial", False):
        return guide.posterior(x, **options)
    return ProgramPosterior(guide, x, options.get("fixed"))
