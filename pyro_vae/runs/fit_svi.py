"""The SVI driver: a run of ``pyro.infer.SVI`` from settings to run directory.

``fit_svi`` starts a run and ``resume_svi`` continues one; both assemble the
same pieces (:func:`setup`) and hand them to :func:`train_epochs`: per epoch,
one pass of SVI steps (``train.train_epoch``), the test ELBO, a line in
``metrics.jsonl`` and a checkpoint; at the end the importance-weighted
log p(x), ``summary.json`` and the figures (``rundir.finish_run``). Under ``torchrun`` every
rank trains and rank 0 alone writes (``pyro_vae.infer.svi.distributed``).
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from tqdm import tqdm

from pyro_vae.infer.svi import distributed
from pyro_vae.runs.assembly import build, load_data, resolve_device
from pyro_vae.plumbing.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pyro_vae.objectives import load_objective_state, objective_state
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.runs.config import learning_rate
from pyro_vae.program.density import plug_in_values
from pyro_vae.program.estimators import elbo_terms, log_likelihood
from pyro_vae.program.posteriors import guide_posterior
from pyro_vae.runs.rundir import (FitResult, config_from_checkpoint, default_out, finish_run, load_states, prepare_out,
                                  write_config, write_metrics)
from pyro_vae.runs.run_figures import run_figures
from pyro_vae.infer.svi.train import Interrupted, NonFiniteLoss, make_svi, train_epoch

# A guide without an encoder fits a fresh q(z) to each test point whenever it
# is scored, so it is scored on the capped evaluation subset, every this many
# epochs and at the last (test_elbo null between).
NON_AMORTIZED_TEST_EVERY = 10
# --compile auto compiles SVI's step on a GPU for runs of this many steps or more: compiling took 1-9 s
# on CPU (Inductor's disk cache warm or cold); a run this long amortises it many times over
AUTO_COMPILE_STEPS = 5000


@dataclass
class Session:
    """What one SVI run trains with, assembled from its settings."""

    config: object
    data: object
    model: torch.nn.Module
    guide: torch.nn.Module
    svi: object
    out: Path
    cluster: object


def setup(config, cluster, out=None):
    """Data, model, guide and SVI on this rank's device; ``out`` is created
    when not given (a new run)."""
    device = resolve_device(cluster.device_name)
    data = load_data(config, device)
    model, guide = build(config, data)
    config.model, config.binarize = model.name, data.binarize
    if out is None:
        cluster.broadcast_modules(model, guide)
        out = prepare_out(config.out or default_out(config), cluster)
        config.out = str(out)
    svi = make_svi(model, guide, config.lr, config.elbo, local_lr=config.local_lr, clip_norm=config.clip_norm,
                   compile=compile_step(config, data, guide), particles=config.particles, baseline=config.baseline,
                   temperature=config.temperature_schedule())
    if cluster.is_main:
        write_config(out, config, data, device, cluster.world_size)
    return Session(config, data, model, guide, svi, Path(out), cluster)


def compile_step(config, data, guide):
    """``--compile`` for SVI's step: on, off, or auto: on for a run on a GPU of
    at least ``AUTO_COMPILE_STEPS`` steps with Trace_ELBO and a guide without
    sparse per-point rows (``CompiledSVI`` cannot record those). On CPU a
    step of the MNIST model is mostly its matrix products, and compiling
    gained 0-25% there (README, "Compiled SVI"): auto leaves it off."""
    if config.compile != "auto":
        return config.compile == "on"
    sparse = any(isinstance(m, torch.nn.Embedding) and m.sparse for m in guide.modules())
    steps = config.epochs * math.ceil(data.num_train / config.batch_size)
    return data.device.type == "cuda" and config.elbo == "trace" and not sparse and steps >= AUTO_COMPILE_STEPS


def checkpoint_state(session, epoch, metrics):
    return {
        "model": session.model.state_dict(),
        "guide": session.guide.state_dict(),
        "optimizer": session.svi.optim.get_state(),
        "objective": objective_state(session.svi),
        "rng": rng_state(),
        "epoch": epoch,
        "metrics": metrics,
        "config": json.dumps(session.config.as_dict()),
    }


def fit_svi(config, progress=True, log=print, should_stop=None):
    """Train ``config.model`` with ``config.guide`` by SVI from scratch; see the module docstring."""
    with distributed.joined(config.device) as cluster:
        pyro.set_rng_seed(config.seed + cluster.rank)  # ranks draw different noise
        session = setup(config, cluster)
        if cluster.is_main:
            # epoch 0: a checkpoint before any step, so even a run stopped in
            # its first epoch can be resumed
            save_checkpoint(session.out / "checkpoint.pt", checkpoint_state(session, 0, []))
        return train_epochs(session, 0, [], progress, log, should_stop)


def resume_svi(run_dir, epochs=None, progress=True, log=print, should_stop=None):
    """Continue the run in ``run_dir`` from its last checkpoint: model, guide,
    optimizer and RNG states, epoch and metrics, so that on CPU the result is
    the same as a run that was never stopped. ``epochs`` extends the run."""
    out = Path(run_dir)
    state = load_checkpoint(out / "checkpoint.pt")
    config = config_from_checkpoint(state, out / "checkpoint.pt")
    if config.inference != "svi":
        raise UsageError(f"{out} is a {config.inference} run; only SVI runs resume")
    if epochs is not None:
        config.epochs = epochs
        config.validate()
    if state["epoch"] >= config.epochs:
        raise UsageError(f"{out} already ran {state['epoch']} of {config.epochs} epochs; pass --epochs N to extend it")
    with distributed.joined(config.device) as cluster:
        session = setup(config, cluster, out)
        load_states(session.model, session.guide, state, out / "checkpoint.pt")
        load_objective_state(session.svi, state.get("objective"))  # absent from older checkpoints
        session.svi.optim.set_state(state["optimizer"])
        set_rng_state(state["rng"])  # rank 0's: exact for one process
        if cluster.rank > 0:  # other ranks: their own noise, the same in every resume
            pyro.set_rng_seed(config.seed + cluster.rank + 7919 * state["epoch"])
        log(f"resuming {out} after epoch {state['epoch']} of {config.epochs}")
        return train_epochs(session, state["epoch"], state["metrics"], progress, log, should_stop)


def held_out_elbo(session, epoch):
    """The test ELBO after ``epoch`` in nats per example (``estimators.elbo_terms``,
    one draw per example), or None between the scored epochs of a guide without an encoder."""
    config, model, guide = session.config, session.model, session.guide
    if getattr(guide, "amortized", True):
        x = session.data.test_x
    elif epoch % NON_AMORTIZED_TEST_EVERY == 0 or epoch == config.epochs:
        x = session.data.test_x[: config.evaluation.max_examples]
    else:
        return None
    fixed = plug_in_values(model, guide)
    proposal = lambda xb: guide_posterior(guide, xb, key="test", fixed=fixed)  # noqa: E731
    return elbo_terms(model, proposal, x, fixed=fixed)[2].mean().item()


def train_epochs(session, start_epoch, metrics, progress, log, should_stop):
    """Epochs ``start_epoch + 1 .. config.epochs``, then :func:`finish`.
    Every rank trains; only the main rank evaluates and writes."""
    config, data, model, guide, cluster, out = (session.config, session.data, session.model, session.guide,
                                                session.cluster, session.out)
    if not cluster.is_main:
        progress, log = False, (lambda *args: None)
    ranks = f" x {cluster.world_size} processes" if cluster.active else ""
    log(f"{model.name} + {config.guide} on {data.name} ({data.num_train} train, {len(data.test_x)} test, "
        f"binarize {data.binarize}) on {data.device}{ranks}; writing {out}")
    metrics = list(metrics)
    start = time.perf_counter()
    epochs = tqdm(range(start_epoch + 1, config.epochs + 1), desc="epochs", disable=not progress, unit="epoch")
    for epoch in epochs:
        model.train()
        guide.train()
        session.svi.optim.set_lr(learning_rate(config, epoch))
        try:
            train_elbo, seconds = train_epoch(session.svi, data, config.batch_size, progress, f"epoch {epoch}",
                                              should_stop, cluster)
        except (NonFiniteLoss, Interrupted) as error:
            error.epoch, error.out = epoch, out
            raise
        model.eval()
        guide.eval()
        if not cluster.is_main:
            continue
        elbo = held_out_elbo(session, epoch)
        metrics.append({"epoch": epoch, "train_elbo": train_elbo, "test_elbo": elbo, "seconds": seconds})
        write_metrics(out, metrics)
        save_checkpoint(out / "checkpoint.pt", checkpoint_state(session, epoch, metrics))
        test_text = "" if elbo is None else f"{elbo:10.3f}"
        epochs.set_postfix(train=f"{train_elbo:.2f}", test=test_text.strip(), refresh=False)
        if not progress:
            log(f"epoch {epoch:4d}  train ELBO {train_elbo:10.3f}  test ELBO {test_text:>10}  {seconds:6.2f}s")
    if not cluster.is_main:
        return FitResult(model, guide, data, config, metrics, None, out)
    return finish(session, metrics, time.perf_counter() - start, progress, log)


def finish(session, metrics, seconds, progress, log):
    """The figures' contents (their draws first, as runs have always made them), the
    importance-weighted log p(x), then ``rundir.finish_run``: ``summary.json``, then the figures
    (the checkpoint and metrics were written after the last epoch)."""
    config, model, guide, data, out = session.config, session.model, session.guide, session.data, session.out
    figures = run_figures(model, guide, data, metrics)
    x = data.test_x[: config.evaluation.max_examples]
    k = config.evaluation.iwae_samples
    fixed = plug_in_values(model, guide)
    ll = log_likelihood(model, lambda xb: guide_posterior(guide, xb, fixed=fixed), x, k, progress=progress,
                        fixed=fixed)
    last = metrics[-1]
    summary = finish_run(out, {
        "train_elbo": last["train_elbo"],
        "test_elbo": last["test_elbo"],
        "log_likelihood": ll.mean().item(),
        "log_likelihood_examples": len(x),
        "log_likelihood_iwae_samples": k,
        "epochs": config.epochs,
        "seconds": seconds,
        "seconds_per_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
    }, log, figures)
    log(f"test ELBO {summary['test_elbo']:.3f}, log p(x) >= {summary['log_likelihood']:.3f} (K={k}, "
        f"{len(x)} test examples) nats per example after {config.epochs} epochs ({seconds:.1f}s); wrote {out}")
    return FitResult(model, guide, data, config, metrics, summary, out)
