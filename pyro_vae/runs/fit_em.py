"""The closed-form EM run: ``python -m pyro_vae.fit --inference em``.

For a model with registered closed-form updates (``pyro_vae.infer.em``; ``gmm``): EM on the training
set, one iteration per epoch, at most ``--epochs`` iterations, stopping earlier when an iteration
gains less than ``em.TOLERANCE`` nats per point. The run directory is the SVI run's: ``config.json``
(with ``guide`` set to ``enumerated``, the exact posterior, so ``load_run`` and ``evaluate`` rebuild
it), ``metrics.jsonl`` (per iteration the exact train and test log p(x), under ``train_elbo`` and
``test_elbo``, which the exact posterior makes equal to it), ``checkpoint.pt``, ``summary.json``
(the exact test log p(x), iterations, seconds) and the figures, written in that order by
``rundir.finish_run``.
"""

import copy
import json
import time

import pyro
import torch

from pyro_vae.runs.assembly import build_model, load_data, resolve_device
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.infer.em import closed_form_models, closed_form_update, run_em
from pyro_vae.plumbing.registry import get_guide
from pyro_vae.runs.rundir import FitResult, default_out, finish_run, prepare_out, write_config
from pyro_vae.runs.run_figures import run_figures


def fit_em(config, progress=True, log=print):
    """The ``--inference em`` run: see the module docstring. ``config`` is left as given: the run's
    own copy, with the guide and objective it rebuilds with, is the result's."""
    config = copy.deepcopy(config)
    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    data = load_data(config, device)
    model = build_model(config, data)
    if closed_form_update(model) is None:
        raise UsageError(f"--inference em needs closed-form EM updates; model {model.name} has none (models with "
                         f"them: {', '.join(closed_form_models())}); fit it with --inference svi")
    config.guide, config.elbo = "enumerated", "enum"  # q(z | x) = p(z | x) exactly: what load_run rebuilds
    guide = get_guide(config.guide)(model, data.num_train)
    config.model, config.binarize = model.name, data.binarize
    out = prepare_out(config.out or default_out(config))
    config.out = str(out)
    write_config(out, config, data, device)
    x = data.train_batch(torch.arange(data.num_train, device=device))
    log(f"{model.name} ({model.num_parameters()} parameters) by closed-form EM on {data.name} "
        f"({data.num_train} train, {len(data.test_x)} test), at most {config.epochs} iterations; writing {out}")
    metrics = []

    def record(step):
        with torch.no_grad():
            test = float(model.log_marginal(data.test_x).double().mean())
        metrics.append({"epoch": step["iteration"], "train_elbo": step["log_likelihood"], "test_elbo": test,
                        "seconds": step["seconds"]})
        if not progress:
            log(f"iteration {step['iteration']:4d}  train log p(x) {step['log_likelihood']:10.4f}  "
                f"test log p(x) {test:10.4f}")

    start = time.perf_counter()
    iterations, train_ll, converged = run_em(model, x, config.epochs, on_iteration=record)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        test_ll = model.log_marginal(data.test_x[: config.evaluation.max_examples]).double()
    summary = finish_run(out, {
        "train_log_likelihood": train_ll, "train_elbo": train_ll, "test_elbo": metrics[-1]["test_elbo"],
        "log_likelihood": float(test_ll.mean()), "log_likelihood_examples": len(test_ll),
        "log_likelihood_exact": True, "iterations": iterations, "converged": converged, "seconds": seconds,
        "seconds_per_iteration": seconds / iterations,
    }, log, run_figures(model, guide, data, metrics), metrics=metrics, checkpoint={
        "model": model.state_dict(), "guide": guide.state_dict(), "epoch": iterations, "metrics": metrics,
        "config": json.dumps(config.as_dict()),
    })
    state = "converged" if converged else "not converged"
    log(f"EM {state} after {iterations} iterations ({seconds:.2f}s): train log p(x) {train_ll:.4f}, test "
        f"{summary['log_likelihood']:.4f} nats per point (exact); wrote {out}")
    return FitResult(model, guide, data, config, metrics, summary, out)
