"""The MCMC run: ``python -m pyro_vae.fit --inference nuts``.

Two ways to fit (``--nuts-mode``):

- ``fixed-decoder`` (with ``--decoder-from RUN_DIR``): the decoder trained in
  another run is held fixed and NUTS (or ChEES-HMC, ``--sampler``) samples
  the local latents z_1..z_N of the first ``--subset`` held-out (test)
  points: the reference posterior against which the encoder and the
  mean-field guide are judged.
- ``mcem``: Monte Carlo EM from scratch on the first ``--subset`` training
  points (Kingma & Welling 2013, section 5): alternate NUTS draws of the
  subset's z given the decoder (E-step) with Adam steps on the decoder
  weights maximising the Monte Carlo estimate of E_p(z|x)[log p(x | z)]
  (M-step).

The sampling is ``mcmc.sample_latents``. A run directory holds
``posterior.nc`` (ArviZ InferenceData: posterior, sample_stats,
observed_data), ``diagnostics.csv`` (``az.summary``: R-hat, bulk and tail
ESS per latent coordinate), ``summary.json`` (divergences, worst R-hat and
ESS, wall time), ``config.json`` and ``checkpoint.pt`` (the decoder and the
per-point Gaussians moment-matched to the draws, for ``evaluate``).
"""

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import pyro
import torch

from pyro_vae.runs.assembly import build_model, load_data, resolve_device
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.program.density import layout_of, plug_in_values
from pyro_vae.plumbing.files import atomic_path
from pyro_vae.infer.mcmc.sampling import diagnose, inference_data, monte_carlo_em, sample_latents
from pyro_vae.infer.moment_matching import MomentMatchedPosterior
from pyro_vae.program.posteriors import guide_posterior
from pyro_vae.runs.rundir import FitResult, default_out, finish_run, load_run, prepare_out, write_config


class Problem(NamedTuple):
    """What a ``--inference nuts`` run samples: the model, its data, the points ``x`` (the first
    ``--subset`` rows of ``split``) and the guide, if any, whose q(z | x) starts the chains."""

    model: torch.nn.Module
    data: object
    x: torch.Tensor
    init_guide: object
    split: str


def write_posterior(out, idata, summary):
    with atomic_path(out / "posterior.nc") as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    with atomic_path(out / "diagnostics.csv") as tmp:
        summary.to_csv(tmp)


def fixed_decoder_problem(config, device):
    """``--nuts-mode fixed-decoder``: the model of ``--decoder-from`` (a
    Bayesian decoder at its posterior mean, which this run saves as its
    weights), its data, the first ``--subset`` test points and the run's
    encoder, if any, to start chains from."""
    source = load_run(config.mcmc.decoder_from, device)
    for name in ("model", "dataset", "data_dir", "binarize", "latent_dim", "hidden_dims", "num_train", "num_test",
                 "data_dim", "data_seed", "imports", "categories", "num_components", "covariance"):
        setattr(config, name, getattr(source.config, name))
    fixed = plug_in_values(source.model, source.guide)
    config.bayesian_decoder = False
    model = build_model(config, source.data)
    model.load_state_dict(source.model.state_dict())
    with torch.no_grad():
        for name, p in model.decoder.named_parameters() if fixed else ():
            p.copy_(fixed[f"decoder.{name}"])
    init_guide = source.guide if getattr(source.guide, "amortized", False) else None
    return Problem(model, source.data, source.data.test_x, init_guide, "test")


def mcem_problem(config, device):
    """``--nuts-mode mcem``: a fresh model and the first ``--subset`` training points."""
    data = load_data(config, device)
    model = build_model(config, data)
    return Problem(model, data, data.train_batch(torch.arange(data.num_train, device=device)), None, "train")


def fit_nuts(config, progress=True, log=print):
    """The ``--inference nuts`` run: see the module docstring."""
    settings = config.mcmc
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--inference nuts runs in one process: start it with python -m pyro_vae.fit, not torchrun")
    if settings.mode == "fixed-decoder" and not settings.decoder_from:
        raise UsageError("--inference nuts samples with a fixed decoder: pass --decoder-from RUN_DIR "
                         "(or --nuts-mode mcem to learn one from scratch)")
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    make_problem = fixed_decoder_problem if settings.mode == "fixed-decoder" else mcem_problem
    problem = make_problem(config, device)
    if settings.subset > len(problem.x):
        raise UsageError(f"--subset {settings.subset} is larger than the {len(problem.x)} points available")
    problem = problem._replace(x=problem.x[: settings.subset])
    model, data, x = problem.model, problem.data, problem.x
    if layout_of(model, x).dim == 0:  # every latent discrete (gmm, categorical_mlp): NUTS has nothing to move
        raise UsageError(f"--inference nuts: model {model.name} has no continuous latent to sample (its discrete "
                         f"ones are summed out or importance-sampled: python -m pyro_vae.evaluate scores them)")
    config.model, config.binarize = model.name, data.binarize
    out = prepare_out(config.out or default_out(config))
    config.out = str(out)
    write_config(out, config, data, device)
    start = time.perf_counter()
    history = []
    if settings.mode == "mcem":
        history, _ = monte_carlo_em(model, x, iterations=settings.em_iterations, warmup=settings.warmup,
                                    samples=settings.samples, m_steps=settings.m_steps, lr=config.lr,
                                    seed=config.seed, progress=progress, log=log, compile=config.compile_flag())
    log(f"{settings.sampler.upper()}: {settings.chains} chains x ({settings.warmup} warm-up + {settings.samples} "
        f"draws) on {len(x)} points, {layout_of(model, x).dim} latent numbers each, all chains in one batch")
    init = None if problem.init_guide is None else guide_posterior(problem.init_guide, x)
    draws, stats, sampling_seconds = sample_latents(
        model, x, chains=settings.chains, warmup=settings.warmup, samples=settings.samples, init=init,
        seed=config.seed, progress=progress, compile=config.compile_flag(), sampler=settings.sampler,
        block_size=settings.block_size)
    return write_nuts_run(config, problem, draws, stats, history=history, sampling_seconds=sampling_seconds,
                          seconds=time.perf_counter() - start, log=log)


def write_nuts_run(config, problem, draws, stats, *, history, sampling_seconds, seconds, log):
    """posterior.nc and diagnostics.csv of a NUTS run of ``problem``, then ``rundir.finish_run``: its
    Monte Carlo EM rounds (``metrics.jsonl``, ``--nuts-mode mcem``), checkpoint.pt and summary.json."""
    out, settings = Path(config.out), config.mcmc
    model, data, x, split = problem.model, problem.data, problem.x, problem.split
    idata = inference_data(draws, stats, x, layout_of(model, x))
    summary_table, diagnostics, warnings = diagnose(idata, settings.chains)
    write_posterior(out, idata, summary_table)
    posterior = MomentMatchedPosterior(model)
    posterior.set_draws(draws, split)
    summary = finish_run(out, {
        **diagnostics, "chains": settings.chains, "warmup": settings.warmup, "samples": settings.samples,
        "subset": len(x), "sampling_seconds": sampling_seconds, "seconds": seconds,
        "seconds_per_point": sampling_seconds / len(x), "warnings": warnings,
    }, log, metrics=history if settings.mode == "mcem" else None, checkpoint={
        "model": model.state_dict(), "guide": posterior.state_dict(),
        "epoch": settings.em_iterations if settings.mode == "mcem" else 0, "metrics": history,
        "config": json.dumps(config.as_dict()),
    })
    r_hat = "n/a (one chain)" if diagnostics["max_r_hat"] is None else f"{diagnostics['max_r_hat']:.3f}"
    log(f"{settings.sampler.upper()} done in {sampling_seconds:.1f}s: {diagnostics['divergences']} divergences, "
        f"max R-hat {r_hat}, min bulk ESS {diagnostics['min_ess_bulk']:.0f}, "
        f"min tail ESS {diagnostics['min_ess_tail']:.0f}; "
        f"wrote {out}")
    for warning in warnings:
        log(f"warning: {warning}")
    return FitResult(model, posterior, data, config, history, summary, out)
