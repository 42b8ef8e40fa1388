"""Evaluate a run: ``python -m pyro_vae.evaluate RUN_DIR``.

    python -m pyro_vae.evaluate RUN_DIR [--iwae-samples 5000] [--split test] [--max-examples N]

Writes ``RUN_DIR/eval.json`` and prints a short table, in nats per example
(the estimators are in ``pyro_vae.program.estimators``):

- ``log_likelihood``: the importance-weighted estimate (Burda et al. 2015)
  log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(. | x), per
  example, averaged, with its standard error over examples: a stochastic
  lower bound that tightens to log p(x) as K grows, the run's q(z | x) the proposal;
- ``elbo``, ``reconstruction`` = log p(x | z) and ``kl`` = log q(z | x) -
  log p(z) (one-sample estimates, so elbo = reconstruction - kl);
- ``active_units``: latent dimensions whose variance over x of E_q[z | x]
  exceeds 0.01 (Burda et al. 2015);
- for models with a closed-form marginal (``linear_gaussian``, ``gmm``): ``exact_log_likelihood``; for a
  model whose latents are all discrete (``gmm``) ``log_likelihood`` is that exact sum too;
- with ``--estimator ais``, beside those: ``ais``, annealed importance
  sampling's log p(x) per example (log-mean-exp over ``--ais-chains``
  chains through ``--ais-steps`` distributions from the prior, or from the
  run's q(z | x) with ``--ais-start q``), its mean and standard error over
  examples, acceptance rate and seconds (``pyro_vae.infer.ais``);
- with ``--bdmc``: ``bdmc``, bidirectional Monte Carlo on data simulated from
  the model: the forward-AIS lower bound, the reverse-AIS upper bound and
  their width, which certifies forward AIS for this model and schedule.
"""

import pyro
import torch

from pyro_vae.infer import ais
from pyro_vae.runs.assembly import resolve_device
from pyro_vae.plumbing.checkpoint import CheckpointError
from pyro_vae.plumbing.files import write_json
from pyro_vae.plumbing.cli import ArgumentParser, UsageError, exit_with, import_user_modules, positive_int, report_out_of_memory
from pyro_vae.data import DataError
from pyro_vae.program.density import layout_of, plug_in_values
from pyro_vae.program.estimators import evaluate
from pyro_vae.program.posteriors import guide_posterior
from pyro_vae.runs.rundir import load_run


def format_table(results):
    rows = [("log_likelihood", "log p(x), importance-weighted"), ("exact_log_likelihood", "log p(x), exact"),
            ("elbo", "ELBO"), ("reconstruction", "  reconstruction E[log p(x|z)]"), ("kl", "  KL(q || p)")]
    lines = [f"{'':34}{'nats/example':>14}{'s.e.':>10}"]
    for key, label in rows:
        if key in results:
            lines.append(f"{label:34}{results[key]:>14.3f}{results[key + '_se']:>10.3f}")
    lines.append(f"{'log p(x) - ELBO':34}{results['log_likelihood_minus_elbo']:>14.3f}")
    lines.append(f"{'active units':34}{results['active_units']:>14d} of {len(results['latent_variances'])}")
    if "ais" in results:
        a = results["ais"]
        lines.append(f"{'log p(x), AIS':34}{a['log_likelihood']:>14.3f}{a['log_likelihood_se']:>10.3f}"
                     f"   ({a['chains']} chains x {a['steps']} steps from the {a['start']}, "
                     f"acceptance {a['acceptance']:.2f}, {a['seconds']:.0f}s)")
    if "bdmc" in results:
        b = results["bdmc"]
        lines.append(f"{'BDMC on simulated data':34}lower {b['lower']:.3f}, upper {b['upper']:.3f}, width "
                     f"{b['width']:.3f} ({b['points']} points)")
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
    p.add_argument("--estimator", choices=("iwae", "ais"), default="iwae",
                   help="iwae: importance sampling with the run's q; ais: annealed importance sampling too "
                        "(default %(default)s)")
    p.add_argument("--ais-steps", type=positive_int, default=ais.DEFAULT_STEPS, metavar="T",
                   help="AIS intermediate distributions (default %(default)s)")
    p.add_argument("--ais-chains", type=positive_int, default=ais.DEFAULT_CHAINS, metavar="K",
                   help="AIS chains per example (default %(default)s)")
    p.add_argument("--ais-start", choices=("prior", "q"), default="prior",
                   help="AIS starts from the prior p(z) or from the run's q(z | x) (default %(default)s)")
    p.add_argument("--bdmc", action="store_true",
                   help="bound log p(x) from both sides on data simulated from the model (forward and reverse "
                        "AIS, the AIS settings above, --max-examples points, default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that models or guides it registers can be named (repeatable; a "
                        "run's own --import modules are imported again without it)")
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
    return x, (lambda xb: guide_posterior(guide, xb, fixed=fixed)), False, fixed


def ais_summary(result, start):
    return {"log_likelihood": result.mean, "log_likelihood_se": result.se, "steps": result.steps,
            "chains": result.chains, "start": start, "acceptance": float(result.acceptance.mean()),
            "seconds": result.seconds, "per_example": result.log_likelihood.tolist()}


def bdmc_summary(run, args, fixed):
    try:
        result = ais.bdmc(run.model, args.max_examples or 100, ais.AISOptions(steps=args.ais_steps,
                                                                               chains=args.ais_chains),
                          fixed=fixed, seed=args.seed, progress=args.progress)
    except ValueError as error:
        raise UsageError(f"--bdmc: {error}") from None
    return {"lower": result.lower, "upper": result.upper, "width": result.width, "points": len(result.x),
            "steps": args.ais_steps, "chains": args.ais_chains,
            "seconds": result.forward.seconds + result.reverse.seconds}


def run_evaluate(args):
    import_user_modules(args.imports)
    run = load_run(args.run_dir, resolve_device(args.device))
    pyro.set_rng_seed(args.seed)
    x, proposal, indexed, fixed = examples_and_proposal(run, args.split, args.max_examples)
    if (args.estimator == "ais" or args.bdmc) and layout_of(run.model, x, fixed).dim == 0:
        raise UsageError(f"--estimator ais and --bdmc anneal continuous latents; model {run.model.name} has none "
                         f"(its log p(x) is importance-sampled, and exact where its discrete latents can be summed)")
    results = evaluate(run.model, proposal, x, args.iwae_samples, args.batch_size, args.progress, fixed, indexed)
    results.update(split=args.split, seed=args.seed, run_dir=str(args.run_dir))
    if getattr(run.guide, "last_fit_steps", None) is not None:  # q fitted per point at test time
        results["test_time_fit_steps"] = run.guide.last_fit_steps
    if args.estimator == "ais":
        start = "prior" if args.ais_start == "prior" else (lambda xb: guide_posterior(run.guide, xb, fixed=fixed))
        options = ais.AISOptions(steps=args.ais_steps, chains=args.ais_chains, start=start)
        result = ais.ais_log_likelihood(run.model, x, options, fixed=fixed, seed=args.seed, progress=args.progress)
        results["ais"] = ais_summary(result, args.ais_start)
    if args.bdmc:
        results["bdmc"] = bdmc_summary(run, args, fixed)
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
