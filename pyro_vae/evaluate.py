"""Evaluate a run: ``python -m pyro_vae.evaluate RUN_DIR``.

    python -m pyro_vae.evaluate RUN_DIR [--iwae-samples 5000] [--split test] [--max-examples N]

Writes ``RUN_DIR/eval.json`` and prints a short table, in nats per example
(the estimators are in ``pyro_vae.estimators``):

- ``log_likelihood``: the importance-weighted estimate (Burda et al. 2015)
  log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(. | x), per
  example, averaged, with its standard error over examples: a stochastic
  lower bound that tightens to log p(x) as K grows, the run's q(z | x) the proposal;
- ``elbo``, ``reconstruction`` = log p(x | z) and ``kl`` = log q(z | x) -
  log p(z) (one-sample estimates, so elbo = reconstruction - kl);
- ``active_units``: latent dimensions whose variance over x of E_q[z | x]
  exceeds 0.01 (Burda et al. 2015);
- for models with a closed-form marginal (``linear_gaussian``): ``exact_log_likelihood``.
"""

import pyro
import torch

from pyro_vae.assembly import resolve_device
from pyro_vae.checkpoint import CheckpointError, write_json
from pyro_vae.cli import ArgumentParser, UsageError, exit_with, positive_int, report_out_of_memory
from pyro_vae.data import DataError
from pyro_vae.density import plug_in_values
from pyro_vae.estimators import evaluate
from pyro_vae.rundir import load_run


def format_table(results):
    rows = [("log_likelihood", "log p(x), importance-weighted"), ("exact_log_likelihood", "log p(x), exact"),
            ("elbo", "ELBO"), ("reconstruction", "  reconstruction E[log p(x|z)]"), ("kl", "  KL(q || p)")]
    lines = [f"{'':34}{'nats/example':>14}{'s.e.':>10}"]
    for key, label in rows:
        if key in results:
            lines.append(f"{label:34}{results[key]:>14.3f}{results[key + '_se']:>10.3f}")
    lines.append(f"{'log p(x) - ELBO':34}{results['log_likelihood_minus_elbo']:>14.3f}")
    lines.append(f"{'active units':34}{results['active_units']:>14d} of {len(results['latent_variances'])}")
    lines.append(f"({results['num_examples']} examples, K = {results['iwae_samples']} importance samples)")
    return "\n".join(lines)


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by python -m pyro_vae.fit")
    p.add_argument("--iwae-samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per example (default %(default)s, as Burda et al. 2015)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default %(default)s)")
    p.add_argument("--max-examples", type=positive_int, metavar="N", help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=positive_int, default=100, help="examples per batch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def examples_and_proposal(run, split, max_examples):
    """The rows to evaluate, q(z | x) for a batch of them, whether that q is
    looked up by the rows' positions, and the model's global values. An MCMC
    run's posterior exists for the points it sampled only, so it is
    evaluated on those, each by its index."""
    model, guide, data = run.model, run.guide, run.data
    x = data.test_x if split == "test" else data.train_batch(torch.arange(data.num_train, device=data.train_x.device))
    fixed = plug_in_values(model, guide)
    if run.config.inference == "nuts" and guide.split == split:
        x = x[: guide.num_points]
        x = x[:max_examples] if max_examples else x
        return x, (lambda xb, rows: guide.posterior(xb, idx=rows)), True, fixed
    x = x[:max_examples] if max_examples else x
    return x, (lambda xb: guide.posterior(xb, fixed=fixed)), False, fixed


def run_evaluate(args):
    run = load_run(args.run_dir, resolve_device(args.device))
    pyro.set_rng_seed(args.seed)
    x, proposal, indexed, fixed = examples_and_proposal(run, args.split, args.max_examples)
    results = evaluate(run.model, proposal, x, args.iwae_samples, args.batch_size, args.progress, fixed, indexed)
    results.update(split=args.split, seed=args.seed, run_dir=str(args.run_dir))
    if getattr(run.guide, "last_fit_steps", None) is not None:  # q fitted per point at test time
        results["test_time_fit_steps"] = run.guide.last_fit_steps
    write_json(f"{args.run_dir}/eval.json", results)
    return results


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        with report_out_of_memory("evaluate"):
            results = run_evaluate(args)
    except (CheckpointError, DataError, UsageError) as error:
        exit_with("evaluate", error)
    print(format_table(results))
    print(f"wrote {args.run_dir}/eval.json")


if __name__ == "__main__":
    main()
