"""The model's density, read off the model's own Pyro program.

Every method and estimator (SVI's evaluation, importance sampling, the
test-time local fits, NUTS, AIS, ``compare``) asks for log p(x, z) here, and
here it is computed by running the model with its latents fixed
(``poutine.condition``) under ``poutine.trace``. So any model that trains
under SVI, whatever its ``forward`` does with its inputs (a conditional VAE
whose rows carry a label, a beta-weighted prior that switches off in eval
mode, several latent sites, a discrete one), is evaluated and sampled
through the same code.

The contract a model follows:

- per-point sites live in the plate named ``"data"``
  (``building_blocks.data_plate``), one value per data point (batch shape
  (N,)); the observed ones are the likelihood, the others the latents;
- a continuous latent site may have any event shape and support; the
  samplers see it through ``biject_to(support)`` (:class:`Layout`), as
  Pyro's ``initialize_model`` does for HMC;
- a discrete latent site must have an enumerable support
  (``has_enumerate_support``): it is summed out exactly, in parallel
  (``poutine.enum``, as ``TraceEnum_ELBO`` does), so the model must
  broadcast over an enumeration dimension left of the data plate; a discrete
  site given a value (a proposal that draws it, as the ``categorical_mlp``
  encoder does) is conditioned on it instead, and a model whose discrete sites
  have more than ``MAX_ENUMERATION`` joint values declares ``sampled_discrete``
  and is evaluated with such values only;
- sites outside the data plate are global (a Bayesian decoder's weights
  ``decoder.<name>``). They are fixed by ``fixed`` (a dict site -> value)
  and are not part of log p(x, z): the densities here are those of the
  model given its global values, the plug-in decoder.

Latent values are given as a dict site -> value of shape (*batch, N,
*event), or, for a model with one continuous latent site (``"z"`` of
``LatentVariableModel``), as that site's tensor.
"""

import math
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import scale_and_mask
from torch.distributions.transforms import ComposeTransform
from pyro.infer import config_enumerate

DATA_PLATE = "data"
MAX_ENUMERATION = 2**12  # joint configurations of a point's discrete sites summed at each evaluation


class LatentSite(NamedTuple):
    """A continuous per-point latent: constrained event ``shape``, the bijection ``transform`` from
    R^``unconstrained_shape`` onto its support, and its slice of the flat unconstrained vector."""

    name: str
    shape: tuple
    transform: object
    unconstrained_shape: tuple
    offset: int
    size: int


class Layout(NamedTuple):
    """The per-point latents of a program: the ``continuous`` sites, laid end to end in one
    unconstrained vector of ``dim`` numbers per point (what the samplers and local fits move), and
    the ``discrete`` sites, summed out with ``enumeration`` joint configurations per point."""

    continuous: tuple
    discrete: tuple
    dim: int
    enumeration: int
    discrete_events: tuple = ()  # the discrete sites' event shapes
    discrete_sizes: tuple = ()  # the discrete sites' numbers of values

    @property
    def names(self):
        return [site.name for site in self.continuous]

    def unflatten(self, u):
        """Constrained values {site: (*batch, N, *shape)} of the flat unconstrained ``u`` (*batch, N,
        dim), and log |det d values / d u| per (*batch, N)."""
        if u.shape[-1] != self.dim:
            raise ValueError(f"the latents {', '.join(self.names)} take {self.dim} unconstrained numbers per point, "
                             f"not {u.shape[-1]}")
        values, log_det = {}, None
        for site in self.continuous:
            part = u[..., site.offset: site.offset + site.size].reshape(*u.shape[:-1], *site.unconstrained_shape)
            value = site.transform(part)
            term = site.transform.log_abs_det_jacobian(part, value)
            term = term.reshape(*u.shape[:-1], -1).sum(-1) if term.dim() > u.dim() - 1 else term
            values[site.name] = value
            log_det = term if log_det is None else log_det + term
        return values, log_det

    def flatten(self, values):
        """The flat unconstrained vector (*batch, N, dim) of constrained ``values`` (a dict, or the
        one continuous site's tensor)."""
        values = self.as_dict(values)
        parts = []
        for site in self.continuous:
            part = site.transform.inv(values[site.name])
            parts.append(part.reshape(*part.shape[: part.dim() - len(site.unconstrained_shape)], site.size))
        return torch.cat(parts, -1)

    def as_dict(self, values):
        if values is None or isinstance(values, dict):
            return values or {}
        if len(self.continuous) != 1:
            raise ValueError(f"the latents {', '.join(self.names)} are several sites: give a dict of values")
        return {self.continuous[0].name: values}

    def is_identity(self):
        """One unconstrained site of vectors and nothing else: u is the site's value, no Jacobian enters."""
        if len(self.continuous) != 1 or self.discrete or len(self.continuous[0].shape) != 1:
            return False
        transform = self.continuous[0].transform
        base = getattr(transform, "base_transform", transform)
        return isinstance(base, ComposeTransform) and not getattr(base, "parts", ())


def is_per_point(site):
    """Whether a trace site (or message) lies in the data plate."""
    return any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])


def _per_point_sites(trace):
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample" and is_per_point(site)]


def latent_layout(model, x, fixed=None):
    """The :class:`Layout` of ``model``'s per-point latents, read off one run of its program on the
    rows ``x``. ValueError, naming the site, for a latent it cannot handle."""
    devices = [x.device] if x.device.type == "cuda" else []
    with pyro.validation_enabled(False), torch.no_grad(), torch.random.fork_rng(devices=devices):
        trace = poutine.trace(poutine.condition(model, data=dict(fixed or {}))).get_trace(x)
    continuous, discrete, offset, enumeration, events, sizes = [], [], 0, 1, [], []
    for name, site in _per_point_sites(trace):
        if site["is_observed"]:
            continue
        fn = site["fn"]
        if tuple(fn.batch_shape) != (len(x),):
            raise ValueError(f"site {name!r} has batch shape {tuple(fn.batch_shape)}: a per-point latent has one "
                             f"value per data point (batch shape ({len(x)},); put inner dimensions in its event)")
        if fn.support.is_discrete:
            if not fn.has_enumerate_support:
                raise ValueError(f"site {name!r} is discrete ({type(fn).__name__}) without an enumerable support: "
                                 f"it cannot be summed out; give it a finite support or a continuous relaxation")
            sizes.append(len(fn.enumerate_support(expand=False)))
            enumeration *= sizes[-1]
            discrete.append(name)
            events.append(tuple(fn.event_shape))
            continue
        transform = biject_to(fn.support)
        shape = tuple(fn.event_shape)
        unconstrained = tuple(transform.inverse_shape(torch.Size(shape)))
        size = math.prod(unconstrained)
        continuous.append(LatentSite(name, shape, transform, unconstrained, offset, size))
        offset += size
    if enumeration > MAX_ENUMERATION and not getattr(model, "sampled_discrete", False):
        raise ValueError(f"the discrete sites {', '.join(discrete)} have {enumeration} joint values per point, "
                         f"more than the {MAX_ENUMERATION} summed exactly")
    if not any(site["is_observed"] for _, site in _per_point_sites(trace)):
        raise ValueError(f"model {getattr(model, 'name', model)} has no observed site in its data plate")
    return Layout(tuple(continuous), tuple(discrete), offset, enumeration, tuple(events), tuple(sizes))


def layout_of(model, x, fixed=None):
    """:func:`latent_layout` on the first rows of ``x``, kept on the model for rows of the same shape,
    dtype and device and ``fixed`` values of the same names and shapes: what the program's sites, their
    event shapes and supports can depend on (not the values: the weights change as training goes).
    Kept because it runs the program once (10-100 ms for the registered models, measured) and the
    samplers ask for it at every gradient."""
    key = (tuple(x.shape[1:]), x.dtype, x.device,
           tuple(sorted((name, tuple(value.shape)) for name, value in (fixed or {}).items())))
    layouts = model.__dict__.setdefault("_pyro_vae_layouts", {})  # not a module attribute, not in its state
    if key not in layouts:
        layouts[key] = latent_layout(model, x[:2], fixed)
    return layouts[key]


def _flat_values(layout, values):
    """The values with their leading batch dimensions (particles, chains) flattened into the data
    dimension, and those batch dimensions."""
    batch = None
    flat = {}
    given = [(name, event) for name, event in zip(layout.discrete, layout.discrete_events) if name in values]
    for name, event in [(site.name, site.shape) for site in layout.continuous] + given:
        value = values[name]
        lead = value.shape[: value.dim() - 1 - len(event)]
        batch = lead if batch is None else batch
        flat[name] = value.reshape(-1, *value.shape[len(lead) + 1:]) if lead else value
    return flat, tuple(batch or ())


def trace_program(model, x, values, fixed=None, enumerate_discrete=True):
    """The model's trace with its continuous latents at ``values`` (see the module docstring) and its
    discrete ones enumerated in parallel, and the values' batch dimensions.

    Leading batch dimensions (particles, chains) are flattened into the data dimension and x is
    repeated to match, so the program sees one flat dataset of prod(batch) * len(x) rows and needs no
    broadcasting rules of its own. Validation is off: training validated this model already, and the
    checks would cost about 5% of every evaluation."""
    layout = layout_of(model, x, fixed)
    flat, batch = _flat_values(layout, layout.as_dict(values))
    repeats = math.prod(batch)
    x_all = x.repeat(repeats, *[1] * (x.dim() - 1)) if repeats > 1 else x
    program = poutine.condition(model, data={**(fixed or {}), **flat})
    summed = [(name, size) for name, size in zip(layout.discrete, layout.discrete_sizes) if name not in flat]
    if summed and enumerate_discrete:
        if math.prod(size for _, size in summed) > MAX_ENUMERATION:
            raise ValueError(f"the discrete sites {', '.join(name for name, _ in summed)} have "
                             f"{math.prod(size for _, size in summed)} joint values per point, more than the "
                             f"{MAX_ENUMERATION} summed exactly: give their values (a proposal that draws them)")
        program = poutine.enum(config_enumerate(program, default="parallel"), first_available_dim=-2)
    with pyro.validation_enabled(False):
        return poutine.trace(program).get_trace(x_all), batch


def site_log_prob(site, scale=None):
    """m * s * log p(value) of a sample site, as Pyro's ELBOs count it (``Trace.compute_log_prob``,
    ``scale_and_mask``): m the site's mask (``poutine.mask``, ``obs_mask``: 0 where it is False) and s
    its scale (its plates' subsampling N / B times any ``poutine.scale``), or ``scale`` where given. The
    one density every estimator and objective reads."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"] if scale is None else scale, site["mask"])


def sum_out(terms):
    """The sum of ``terms``, broadcast over the enumeration dimensions left of the data plate, with
    those dimensions summed out in probability: shape (rows,)."""
    total = None
    for term in terms:
        total = term if total is None else total + term
    while total.dim() > 1:
        total = total.logsumexp(0)
    return total


def log_joint_terms(model, x, z, fixed=None):
    """(log p(x | z), log p(z)) per example and batch index, each of shape (*batch, len(x)): with the
    discrete latents summed out, log p(z) = log sum_y p(y, z) over the latent sites and log p(x | z)
    = log sum_y p(x, y, z) - log p(z); without discrete latents, the observed and the latent sites'
    log densities."""
    trace, batch = trace_program(model, x, z, fixed)
    layout = layout_of(model, x, fixed)
    latents = {*layout.names, *layout.discrete}  # conditioned, they read as observed in the trace
    latent, observed = [], []
    for name, site in _per_point_sites(trace):
        (latent if name in latents else observed).append(site_log_prob(site))
    if not observed:
        raise ValueError(f"model {getattr(model, 'name', model)} has no observed site in its data plate")
    if not latent:
        log_prior = torch.zeros_like(observed[0])
    else:
        log_prior = sum_out(latent)
    if layout.discrete:
        log_lik = sum_out(latent + observed) - log_prior
    else:
        log_lik = sum_out(observed)
    return log_lik.reshape(*batch, len(x)), log_prior.reshape(*batch, len(x))


def log_joint(model, x, z, fixed=None):
    """log p(x, z) = log p(x | z) + log p(z), shape (*batch, len(x))."""
    log_lik, log_prior = log_joint_terms(model, x, z, fixed)
    return log_lik + log_prior


def unconstrained_terms(model, x, u, fixed=None):
    """(log p(x | z), log p(z) + log |det dz/du|) at the flat unconstrained ``u`` (*batch, N, dim):
    the two terms of the density of u that the samplers, AIS and the local fits follow."""
    layout = layout_of(model, x, fixed)
    if layout.is_identity():
        return log_joint_terms(model, x, u, fixed)
    values, log_det = layout.unflatten(u)
    log_lik, log_prior = log_joint_terms(model, x, values, fixed)
    return log_lik, log_prior + log_det


def observation(model, x, z, fixed=None):
    """p(x | z) as the program builds it for rows ``x`` (which may carry inputs the model conditions
    on, such as a label): the distribution of the observed site ``"x"`` of the data plate (else of its
    first observed site), batch shape flat, its discrete latents drawn from their conditional prior
    rather than summed out."""
    trace, _ = trace_program(model, x, z, fixed, enumerate_discrete=False)
    layout = layout_of(model, x, fixed)
    latents = {*layout.names, *layout.discrete}
    observed = [(name, site) for name, site in _per_point_sites(trace) if site["is_observed"] and name not in latents]
    for name, site in sorted(observed, key=lambda item: item[0] != "x"):  # the site named "x" first
        return site["fn"]
    raise ValueError(f"model {getattr(model, 'name', model)} has no observed site in its data plate")


def prior_draws(model, x, fixed=None):
    """Constrained latents drawn from p(z) (discrete ones from p(y) and dropped: the continuous draws
    are from their marginal), one per row of ``x``, as a dict site -> value."""
    layout = layout_of(model, x, fixed)
    with pyro.validation_enabled(False):
        trace = poutine.trace(poutine.condition(model, data=dict(fixed or {}))).get_trace(x)
    return {site.name: trace.nodes[site.name]["value"] for site in layout.continuous}


def plug_in_values(model, guide):
    """The global values every evaluation fixes: a Bayesian decoder at its
    posterior mean E_q[theta] (as ``decoder.<name>`` sites); nothing for a
    decoder of point estimates."""
    if not getattr(model, "bayesian_decoder", False):
        return {}
    return {f"decoder.{name}": value for name, value in guide.decoder_posterior.mean().items()}


def log_density_for_sampler(model, x, chains, fixed=None):
    """The target of NUTS: u of shape (chains, N, dim), the flat unconstrained latents
    (:class:`Layout`), -> (log p(x, z(u)) + log |det dz/du| per chain, shape (chains,), and its
    gradient in u), the model's weights held fixed. The samplers record this function once (Pyro's
    bookkeeping is Python and leaves no operations in the recording); ``x`` and the weights are read
    at every call, so a recording follows them when they are changed in place."""
    layout_of(model, x, fixed)  # found here, once: inside a recording its probe's operations would stay

    def log_density(u):
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            flat = u.reshape(-1, u.shape[-1])
            x_all = x.repeat(chains, *[1] * (x.dim() - 1))
            log_lik, log_prior = unconstrained_terms(model, x_all, flat, fixed)
            value = (log_lik + log_prior).reshape(u.shape[:2]).sum(-1)
            (grad,) = torch.autograd.grad(value.sum(), u)
        return value.detach(), grad

    return log_density
