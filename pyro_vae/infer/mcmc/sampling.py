"""MCMC on a model's local latents with its weights fixed, and Monte Carlo EM.

``sample_latents`` draws z_1..z_N | x_1..x_N by NUTS (``infer.mcmc.nuts``)
or ChEES-HMC (``infer.mcmc.chees``) on the model's own program
(``density.log_density_for_sampler``); ``inference_data`` and ``diagnose``
turn the draws into ArviZ InferenceData and its R-hat / ESS checks;
``monte_carlo_em`` learns a decoder by alternating NUTS draws with decoder
steps (Kingma & Welling 2013, section 5). The ``--inference nuts`` run is
``pyro_vae.runs.fit_nuts``.
"""

import time
from collections import OrderedDict
from typing import NamedTuple

import arviz as az
import pyro
import torch

from pyro_vae.nn import frozen
from pyro_vae.program.density import layout_of, log_density_for_sampler, unconstrained_terms
from pyro_vae.infer.mcmc import SAMPLERS, chees, nuts
from pyro_vae.infer.recording import resolve_compile

RHAT_LIMIT = 1.01
MIN_ESS_PER_CHAIN = 100  # Vehtari et al. (2021): bulk and tail ESS of at least 100 per chain


class SamplerTarget(NamedTuple):
    """A model's log p(x, z) over a data buffer, and the sampler's recordings of it."""

    model: object
    fixed: object
    data: torch.Tensor  # refilled in place for each call: the recordings read x from here
    log_density: object
    recorded: dict


TARGETS = OrderedDict()  # the last few targets, so that repeated calls (MCEM's E-steps) record once
MAX_TARGETS = 4


def sampler_target(model, x, chains, fixed=None):
    """The :class:`SamplerTarget` of ``model`` for data shaped like ``x``,
    reused while the model, the shapes and the ``fixed`` tensors are the same
    objects (new weights changed in place and new data of the same shape
    need no new recording), its buffer refilled with ``x``."""
    key = (id(model), tuple(x.shape), x.dtype, x.device, chains,
           tuple((name, id(value)) for name, value in (fixed or {}).items()))
    target = TARGETS.get(key)
    if target is None or target.model is not model:
        data = x.detach().clone()
        target = SamplerTarget(model, fixed, data, log_density_for_sampler(model, data, chains, fixed), {})
        TARGETS[key] = target
    TARGETS.move_to_end(key)
    while len(TARGETS) > MAX_TARGETS:
        TARGETS.popitem(last=False)
    target.data.copy_(x)
    return target


# how a statistic of the rows that one chain was split into (blocks, or single points) becomes the chain's
REDUCE_ROWS = {"diverging": torch.any, "n_steps": torch.amax, "tree_depth": torch.amax, "energy": torch.sum}


def sample_latents(model, x, *, chains=4, warmup=500, samples=500, init=None, seed=0, progress=False, fixed=None,
                   compile="auto", sampler="nuts", block_size=None, max_tree_depth=10):
    """Draws of z_1..z_N | x_1..x_N with the model's weights fixed (and
    its global sites at ``fixed``).

    ``sampler``:

    - "nuts" (``infer.mcmc.nuts``): each chain one NUTS trajectory over the
      joint latents of ``block_size`` points (all N by default; 1 makes
      every point its own chain), the blocks' trees in lockstep, each with
      its own step size and metric, the trees capped at ``max_tree_depth``;
    - "chees" (``infer.mcmc.chees``): every point its own ``chains`` chains of
      jittered HMC, one step size and trajectory length adapted for all.

    The chains move the flat unconstrained latents u of each point
    (``density.Layout``: every continuous latent site through
    ``biject_to(support)``, discrete ones summed out); for the built-in
    models u is z. ``init`` is a posterior over the latents with batch shape
    (N,) (an encoder's q(z | x), say; a dict-valued one for several sites):
    each chain starts from its own draw of it, so that chains start apart
    (R-hat needs that) but near the posterior. Without it chains start
    uniformly in [-2, 2] in u, as Pyro's default does. ``compile``: True,
    False or "auto" (``nuts.sample``); recordings are kept for the
    next call with the same model and shapes (:func:`sampler_target`).

    Returns (draws of u, shape (chains, samples, N, dim), per-iteration
    statistics of shape (chains, samples), seconds of wall time);
    ``layout_of(model, x).unflatten`` turns draws into the sites' values.
    """
    start = time.perf_counter()
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    layout = layout_of(model, x, fixed)
    n_points, dim = len(x), layout.dim
    if dim == 0:
        raise ValueError(f"model {model.name} has no continuous latent to sample (its discrete ones are summed out)")
    block = 1 if sampler == "chees" else (n_points if block_size is None else block_size)
    if not 1 <= block <= n_points or n_points % block:
        raise ValueError(f"block_size must divide the {n_points} points, not {block_size!r}")
    pyro.set_rng_seed(seed)
    shape = (chains, n_points, dim)
    with frozen(model), torch.no_grad():
        if init is None:
            z0 = torch.rand(shape, device=x.device, dtype=x.dtype) * 4 - 2
        else:
            z0 = init.sample((chains,))
            z0 = (z0 if layout.is_identity() else layout.flatten(z0)).to(x.dtype)
        target = sampler_target(model, x, chains, fixed)
        rows = z0.reshape(-1, block, dim)  # chain-major: the density's rows follow x repeated per chain
        if sampler == "nuts":
            draws, stats = nuts.sample(target.log_density, rows, warmup, samples, seed, max_tree_depth, progress,
                                       compile, target.recorded)
        else:
            draws, stats = chees.sample(target.log_density, rows, chains, warmup, samples, seed, progress, compile,
                                        target.recorded)
    blocks = n_points // block
    draws = draws.reshape(chains, blocks, samples, block, dim).transpose(1, 2).reshape(chains, samples, *shape[1:])
    stats = {name: REDUCE_ROWS.get(name, torch.mean)(value.reshape(chains, blocks, samples), 1)
             for name, value in stats.items()}
    return draws, stats, time.perf_counter() - start


def inference_data(draws, stats, x, layout=None):
    """ArviZ InferenceData: the posterior, one variable per latent site (chain, draw, point, its
    dimensions: ``z`` (chain, draw, point, latent) for the built-in models), from the draws of u and
    the ``layout`` (None: u is the site ``z``), the sampler's statistics per (chain, draw) (ArviZ's
    names) and the observed data."""
    if layout is None or layout.is_identity():
        name = "z" if layout is None else layout.names[0]
        values, dims = {name: draws}, {name: ["point", "latent"]}
    else:
        values = layout.unflatten(draws)[0]
        dims = {name: ["point", *[f"{name}_dim_{i}" for i in range(value.dim() - 3)]] for name, value in values.items()}
    return az.from_dict(
        posterior={name: value.detach().cpu().numpy() for name, value in values.items()},
        sample_stats={name: value.cpu().numpy() for name, value in stats.items()},
        observed_data={"x": x.cpu().numpy()},
        dims={**dims, "x": ["point", "feature"]},
    )


def diagnose(idata, chains):
    """(az.summary table, figures: divergences, worst R-hat, min bulk/tail ESS, warnings)."""
    summary = az.summary(idata, var_names=list(idata.posterior.data_vars), kind="diagnostics", round_to="none")
    divergences = int(idata.sample_stats["diverging"].sum())
    figures = {
        "divergences": divergences,
        "max_r_hat": float(summary["r_hat"].max()) if chains > 1 else None,
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "min_ess_tail": float(summary["ess_tail"].min()),
    }
    warnings = []
    if figures["max_r_hat"] is not None and figures["max_r_hat"] > RHAT_LIMIT:
        worst = summary["r_hat"].idxmax()
        warnings.append(f"R-hat up to {figures['max_r_hat']:.3f} (> {RHAT_LIMIT}) at {worst}: chains disagree; "
                        f"run longer (--warmup, --samples)")
    if divergences:
        warnings.append(f"{divergences} divergent transitions: the posterior has regions NUTS cannot explore "
                        f"at this step size; results may be biased")
    low = MIN_ESS_PER_CHAIN * chains
    if figures["min_ess_bulk"] < low or figures["min_ess_tail"] < low:
        warnings.append(f"low effective sample size (bulk {figures['min_ess_bulk']:.0f}, tail "
                        f"{figures['min_ess_tail']:.0f} < {low}): run longer (--samples)")
    return summary, figures, warnings


def monte_carlo_em(model, x, *, iterations, warmup, samples, m_steps, lr, seed=0, progress=False, log=print,
                   on_iteration=None, compile="auto"):
    """Monte Carlo EM on the decoder of ``model`` for the points ``x``.

    E-step: one NUTS chain (``warmup`` + ``samples``) draws z | x under the
    current decoder, started from the previous E-step's last draw. M-step:
    ``m_steps`` Adam steps on the decoder maximising the mean over draws of
    sum_i log p(x_i | z_i^(s)), read off the model's program.
    ``on_iteration(record)`` is called after each round. Returns the
    per-iteration history and the last E-step's draws of u, shape (1, samples, N, dim).
    Every E-step runs on one recording of the sampler's steps (the new
    weights are read in place); "auto" ``compile`` counts all the rounds.
    """
    compile = resolve_compile(compile, iterations * (warmup + samples), x.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    init, history = None, []
    for iteration in range(1, iterations + 1):
        draws, stats, seconds = sample_latents(model, x, chains=1, warmup=warmup, samples=samples, init=init,
                                               seed=seed + iteration, progress=progress, compile=compile)
        z = draws[0]  # (samples, N, L)
        start = time.perf_counter()
        model.train()
        for _ in range(m_steps):
            log_lik = unconstrained_terms(model, x, z)[0].sum(-1).mean()
            optimizer.zero_grad()
            (-log_lik).backward()
            optimizer.step()
        model.eval()
        init = torch.distributions.Independent(torch.distributions.Normal(z[-1], 1e-3), 1)
        record = {"iteration": iteration, "log_likelihood_given_z": log_lik.item() / len(x),
                  "divergences": int(stats["diverging"].sum()), "seconds": seconds + time.perf_counter() - start}
        history.append(record)
        if on_iteration is not None:
            on_iteration(record)
        log(f"MCEM iteration {iteration:3d}: E[log p(x|z)] {record['log_likelihood_given_z']:9.3f} nats/point, "
            f"{record['divergences']} divergences, {record['seconds']:.1f}s")
    return history, draws


