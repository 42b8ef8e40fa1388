"""NUTS on the same model: ``python -m pyro_vae.fit --guide nuts``, on a small subset.

Two ways to fit (``--nuts-mode``):

- ``fixed-decoder`` (with ``--decoder-from RUN_DIR``): the decoder trained in
  another run is held fixed and NUTS samples the local latents z_1..z_N of
  the first ``--subset`` held-out (test) points: the reference posterior
  against which the encoder and the mean-field guide are judged.
- ``mcem``: Monte Carlo EM from scratch on the first ``--subset`` training
  points (Kingma & Welling 2013, section 5): alternate NUTS draws of the
  subset's z given the decoder (E-step) with Adam steps on the decoder
  weights maximising the Monte Carlo estimate of E_p(z|x)[log p(x | z)]
  (M-step). The learned decoder is saved like any run's.

The sampler (``pyro_vae.nuts_sampler``) is NUTS as in Stan, NumPyro and
Pyro (multinomial, generalised U-turn criterion, Stan's warm-up), written for
this target: the model's log density and its gradient are recorded once
with ``torch.jit.trace`` (the decoder frozen, ``requires_grad_(False)``, so
only z is differentiated), all chains advance in one batch in this process
(no worker processes, which on 2 cores buy nothing), and the mass matrix is
one dense L x L block per data point, the shape of a posterior that
factorises over points given the decoder. benchmarks/nuts_speed.py measures
it against Pyro's and NumPyro's NUTS on the same problem.

A run directory holds ``posterior.nc`` (ArviZ InferenceData: posterior,
sample_stats, observed_data), ``diagnostics.csv`` (``az.summary``: R-hat,
bulk and tail ESS per latent coordinate), ``summary.json`` (divergences,
worst R-hat and ESS, wall time) and ``checkpoint.pt`` (the decoder and the
per-point Gaussians moment-matched to the draws, for ``evaluate``).
"""

import json
import os
import time

import arviz as az
import pyro
import torch

from pyro_vae import nuts_sampler
from pyro_vae.building_blocks import frozen
from pyro_vae.checkpoint import atomic_path, save_checkpoint, write_json, write_text
from pyro_vae.cli import UsageError
from pyro_vae.distributed import Cluster

RHAT_LIMIT = 1.01
MIN_ESS_PER_CHAIN = 100  # Vehtari et al. (2021): bulk and tail ESS of at least 100 per chain


def latent_log_density(model, x, chains):
    """The target of NUTS: z of shape (chains, N, L) -> (log p(x, z) of each
    chain's state, shape (chains,), and its gradient in z), where
    log p(x, z) = sum_i log p(z_i) + log p(x_i | z_i).

    It calls the model's own ``prior`` and ``likelihood``, the two
    distributions its program samples from (``LatentVariableModel.forward``),
    rather than tracing the program with Pyro: the sampler records this
    function once with ``torch.jit.trace``, and Pyro's bookkeeping (plate
    scales, broadcasting) would stay in the recording as a quarter more
    operations at every leapfrog step. ``tests/test_nuts_sampler.py`` checks
    that the two agree for every registered model.
    """
    x_all = x.repeat(chains, 1)

    def log_density(z):
        z = z.detach().requires_grad_(True)
        # validation off: its checks would be recorded as dead operations, or as fixed branches
        with torch.enable_grad(), pyro.validation_enabled(False):
            flat = z.reshape(-1, z.shape[-1])
            per_point = model.prior(x_all).log_prob(flat) + model.likelihood(flat).log_prob(x_all)
            value = per_point.reshape(z.shape[:2]).sum(-1)
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    return log_density


def sample_latents(model, x, chains=4, warmup=500, samples=500, init=None, seed=0, progress=False):
    """NUTS draws of z_1..z_N | x_1..x_N with the model's weights fixed
    (``pyro_vae.nuts_sampler``: all chains in one batch, a dense L x L mass
    matrix block per point).

    ``init`` is a distribution over z with batch shape (N,) (an encoder's
    q(z | x), say): each chain starts from its own draw of it, so that chains
    start apart (R-hat needs that) but near the posterior. Without it chains
    start uniformly in [-2, 2], as Pyro's default does.

    Returns (draws of shape (chains, samples, N, latent_dim), per-iteration
    statistics of shape (chains, samples) (``diverging``, ``tree_depth``,
    ...), seconds of wall time).
    """
    start = time.perf_counter()
    pyro.set_rng_seed(seed)
    shape = (chains, len(x), model.latent_dim)
    with frozen(model), torch.no_grad():
        if init is None:
            z0 = torch.rand(shape, device=x.device, dtype=x.dtype) * 4 - 2
        else:
            z0 = init.sample((chains,)).to(x.dtype)
        log_density = latent_log_density(model, x, chains)
        draws, stats = nuts_sampler.sample(log_density, z0, warmup, samples, seed, progress=progress)
    return draws, stats, time.perf_counter() - start


def inference_data(draws, stats, x):
    """ArviZ InferenceData: posterior z (chain, draw, point, latent), the
    sampler's statistics per (chain, draw) (``diverging``, ``tree_depth``,
    ``n_steps``, ``acceptance_rate``, ``energy``, ``step_size``: ArviZ's
    names) and the observed data."""
    return az.from_dict(
        posterior={"z": draws.cpu().numpy()},
        sample_stats={name: value.cpu().numpy() for name, value in stats.items()},
        observed_data={"x": x.cpu().numpy()},
        dims={"z": ["point", "latent"], "x": ["point", "feature"]},
    )


def diagnose(idata, chains):
    """(az.summary table, divergences, worst R-hat, min bulk/tail ESS, warnings)."""
    summary = az.summary(idata, var_names=["z"], kind="diagnostics", round_to="none")
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


def write_posterior(out, idata, summary):
    with atomic_path(out / "posterior.nc") as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    with atomic_path(out / "diagnostics.csv") as tmp:
        summary.to_csv(tmp)


def monte_carlo_em(model, x, iterations, warmup, samples, m_steps, lr, seed=0, progress=False, log=print,
                   on_iteration=None):
    """Monte Carlo EM on the decoder of ``model`` for the points ``x``.

    E-step: one NUTS chain (``warmup`` + ``samples``) draws z | x under the
    current decoder, started from the previous E-step's last draw. M-step:
    ``m_steps`` Adam steps on the decoder maximising the mean over draws of
    sum_i log p(x_i | z_i^(s)). ``on_iteration(record)`` is called after
    each round. Returns the per-iteration history and the last E-step's
    draws, shape (1, samples, N, latent_dim).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    init, history = None, []
    for iteration in range(1, iterations + 1):
        draws, stats, seconds = sample_latents(model, x, 1, warmup, samples, init, seed + iteration, progress=progress)
        z = draws[0]  # (samples, N, L)
        start = time.perf_counter()
        model.train()
        for _ in range(m_steps):
            log_lik = model.likelihood(z).log_prob(x).sum(-1).mean()
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


def fit_nuts(config, progress=True, log=print):
    """The ``--guide nuts`` run: see the module docstring."""
    from pyro_vae.fit import (FitResult, build, config_dict, default_out, load_data, load_run, prepare_out,
                              resolve_device, write_config)

    config.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--guide nuts runs in one process: start it with python -m pyro_vae.fit, not torchrun")
    if config.nuts_mode == "fixed-decoder" and not config.decoder_from:
        raise UsageError("--guide nuts samples with a fixed decoder: pass --decoder-from RUN_DIR "
                         "(or --nuts-mode mcem to learn one from scratch)")
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    if config.nuts_mode == "fixed-decoder":
        model, source_guide, data, source_config, _ = load_run(config.decoder_from, device)
        for name in ("model", "dataset", "data_dir", "binarize", "latent_dim", "hidden_dims", "num_train", "num_test",
                     "data_dim", "data_seed"):
            setattr(config, name, getattr(source_config, name))
        if model.decoder_values is not None:  # a Bayesian decoder: NUTS uses, and saves, its posterior mean
            with torch.no_grad():
                for name, p in model.decoder.named_parameters():
                    p.copy_(model.decoder_values[name])
            model.decoder_values, model.bayesian_decoder = None, False
        x = data.test_x
        init_guide = source_guide if getattr(source_guide, "amortized", False) else None
    else:
        data = load_data(config, device)
        config.guide = "amortized"  # build() needs an SVI guide for its sizes; only the model is used
        model, _ = build(config, data)
        config.guide = "nuts"
        x = data.train_batch(torch.arange(data.num_train, device=device))
        init_guide = None
    if config.subset > len(x):
        raise UsageError(f"--subset {config.subset} is larger than the {len(x)} points available")
    x = x[: config.subset]
    config.model, config.binarize = model.name, data.binarize
    out = prepare_out(config.out or default_out(config))
    config.out = str(out)
    write_config(out, config, data, device, Cluster())
    start = time.perf_counter()
    history = []
    if config.nuts_mode == "mcem":
        history, _ = monte_carlo_em(model, x, config.em_iterations, config.warmup, config.samples, config.m_steps,
                                    config.lr, config.seed, progress, log)
        write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    init = None if init_guide is None else init_guide.posterior(x)
    log(f"NUTS: {config.chains} chains x ({config.warmup} warm-up + {config.samples} draws) on {len(x)} points, "
        f"latent dim {model.latent_dim}, all chains in one batch")
    draws, stats, sampling_seconds = sample_latents(model, x, config.chains, config.warmup, config.samples, init,
                                                    config.seed, progress=progress)
    idata = inference_data(draws, stats, x)
    summary_table, figures, warnings = diagnose(idata, config.chains)
    write_posterior(out, idata, summary_table)

    posterior = build_posterior(model, data, draws, x)
    save_checkpoint(out / "checkpoint.pt", {
        "model": model.state_dict(), "guide": posterior.state_dict(), "epoch": config.em_iterations
        if config.nuts_mode == "mcem" else 0, "metrics": history, "config": json.dumps(config_dict(config)),
    })
    summary = {**figures, "chains": config.chains, "warmup": config.warmup, "samples": config.samples,
               "subset": len(x), "sampling_seconds": sampling_seconds, "seconds": time.perf_counter() - start,
               "seconds_per_point": sampling_seconds / len(x), "warnings": warnings}
    write_json(out / "summary.json", summary)
    r_hat = "n/a (one chain)" if figures["max_r_hat"] is None else f"{figures['max_r_hat']:.3f}"
    log(f"NUTS done in {sampling_seconds:.1f}s: {figures['divergences']} divergences, max R-hat {r_hat}, "
        f"min bulk ESS {figures['min_ess_bulk']:.0f}, min tail ESS {figures['min_ess_tail']:.0f}; wrote {out}")
    for warning in warnings:
        log(f"warning: {warning}")
    return FitResult(model, posterior, data, config, history, summary, out)


def build_posterior(model, data, draws, x):
    from pyro_vae.registry import get_guide

    posterior = get_guide("nuts")(model, data.num_train)
    posterior.set_draws(x, draws)
    return posterior
