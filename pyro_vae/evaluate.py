"""Evaluate a trained run: importance-weighted log-likelihood, ELBO terms, active units.

    python -m pyro_vae.evaluate RUN_DIR [--iwae-samples 5000] [--split test] [--max-examples N]

Writes ``RUN_DIR/eval.json`` and prints a short table. All figures are in
nats per example.

- ``log_likelihood``: the importance-weighted estimate (Burda et al. 2015)
  log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(. | x),
  computed per example in log space and averaged, with its standard error
  over examples. It is a stochastic lower bound that tightens to log p(x) as
  K grows; the guide's q(z | x) is the proposal.
- ``elbo``: the single-sample ELBO log p(x | z) + log p(z) - log q(z | x),
  z ~ q, averaged; ``reconstruction`` = log p(x | z) and ``kl`` =
  log q(z | x) - log p(z) (one-sample estimates, so elbo = reconstruction - kl).
- ``active_units``: latent dimensions whose variance over x of E_q[z | x]
  exceeds 0.01 (Burda et al. 2015).
- for models with a closed-form marginal (``linear_gaussian``):
  ``exact_log_likelihood``.
"""

import math

import pyro
import pyro.poutine as poutine
import torch
from tqdm import tqdm

from pyro_vae.checkpoint import CheckpointError, write_json
from pyro_vae.cli import ArgumentParser, UsageError, exit_with, positive_int
from pyro_vae.data import DataError

ACTIVE_UNIT_THRESHOLD = 0.01
# Particles are drawn in chunks so that one chunk's (particles x examples x
# data_dim) tensors stay near this many elements (64 MB of float32 each).
CHUNK_ELEMENTS = 2**24


def log_joint_terms(model, x, z):
    """(log p(x | z), log p(z)) per particle and example, shape ``z.shape[:-1]``.

    Runs the model itself with z fixed (``poutine.condition``) inside a
    particle plate, so any model whose latent site is called ``"z"`` works;
    observed sites add to the first term, the other sample sites to the second.
    Validation is off here: training already validated this model, and
    checking the support of x for every chunk cost about 5% of evaluation.
    """
    with pyro.validation_enabled(False), pyro.plate("particles", z.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x)
    trace.compute_log_prob()
    log_lik = log_prior = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        if site["is_observed"] and site["name"] != "z":
            log_lik = log_lik + site["log_prob"]
        else:
            log_prior = log_prior + site["log_prob"]
    return log_lik, log_prior


@torch.no_grad()
def log_likelihood(model, proposal, x, num_samples=5000, batch_size=100, progress=False):
    """Importance-weighted estimate of log p(x) for each row of ``x``.

    ``proposal(x_batch)`` returns q(z | x) with batch shape (len(x_batch),).
    For each example, log (1/K) sum_k w_k with log w_k = log p(x, z_k) - log
    q(z_k | x), accumulated chunk by chunk with logaddexp, so memory does not
    grow with K. Returns a tensor of shape (len(x),).
    """
    results = []
    batches = x.split(batch_size)
    for x_batch in tqdm(batches, desc=f"log p(x), K={num_samples}", disable=not progress, leave=False):
        q = proposal(x_batch)
        chunk = max(1, min(num_samples, CHUNK_ELEMENTS // (len(x_batch) * x_batch.shape[-1])))
        total = torch.full((len(x_batch),), -math.inf, device=x_batch.device)
        for start in range(0, num_samples, chunk):
            z = q.sample((min(chunk, num_samples - start),))
            log_lik, log_prior = log_joint_terms(model, x_batch, z)
            log_w = log_lik + log_prior - q.log_prob(z)
            total = torch.logaddexp(total, log_w.logsumexp(0))
        results.append(total - math.log(num_samples))
    return torch.cat(results)


@torch.no_grad()
def elbo_terms(model, proposal, x, batch_size=1000):
    """Single-sample (reconstruction, kl, elbo) per example: log p(x | z),
    log q(z | x) - log p(z) and their difference, z ~ q(z | x)."""
    reconstruction, kl = [], []
    for x_batch in x.split(batch_size):
        q = proposal(x_batch)
        z = q.sample((1,))
        log_lik, log_prior = log_joint_terms(model, x_batch, z)
        reconstruction.append(log_lik[0])
        kl.append((q.log_prob(z) - log_prior)[0])
    reconstruction, kl = torch.cat(reconstruction), torch.cat(kl)
    return reconstruction, kl, reconstruction - kl


@torch.no_grad()
def active_units(proposal, x, batch_size=1000, threshold=ACTIVE_UNIT_THRESHOLD):
    """(count, per-dimension variances) of E_q[z | x] over the rows of x."""
    means = torch.cat([proposal(x_batch).mean for x_batch in x.split(batch_size)])
    return count_active(means, threshold)


def count_active(means, threshold=ACTIVE_UNIT_THRESHOLD):
    variances = means.var(0)
    return int((variances > threshold).sum()), variances


def mean_and_se(values):
    values = values.double()
    se = values.std() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def evaluate(model, proposal, x, num_samples=5000, batch_size=100, progress=False):
    """Every figure of ``eval.json`` for ``model`` with ``proposal`` on ``x``.

    The proposal is asked once per batch and its q reused for every figure:
    for a meanfield or NUTS run asking means an optimisation per point."""
    ll, reconstruction, kl, means = [], [], [], []
    for x_batch in tqdm(x.split(batch_size), desc=f"evaluate, K={num_samples}", disable=not progress, leave=False):
        q = proposal(x_batch)
        fixed = lambda _, q=q: q  # noqa: E731
        ll.append(log_likelihood(model, fixed, x_batch, num_samples, len(x_batch)))
        batch_reconstruction, batch_kl, _ = elbo_terms(model, fixed, x_batch, len(x_batch))
        reconstruction.append(batch_reconstruction)
        kl.append(batch_kl)
        means.append(q.mean)
    ll, reconstruction, kl = torch.cat(ll), torch.cat(reconstruction), torch.cat(kl)
    count, variances = count_active(torch.cat(means))
    results = {"num_examples": len(x), "iwae_samples": num_samples}
    for name, values in [("log_likelihood", ll), ("elbo", reconstruction - kl), ("reconstruction", reconstruction),
                         ("kl", kl)]:
        results[name], results[f"{name}_se"] = mean_and_se(values)
    results["log_likelihood_minus_elbo"] = results["log_likelihood"] - results["elbo"]
    results["active_units"] = count
    results["latent_variances"] = variances.tolist()
    if hasattr(model, "log_marginal"):
        with torch.no_grad():
            results["exact_log_likelihood"], results["exact_log_likelihood_se"] = mean_and_se(model.log_marginal(x))
    return results


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


def main(argv=None):
    from pyro_vae.fit import load_run, resolve_device

    args = parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, guide, data, config, _ = load_run(args.run_dir, device)
        pyro.set_rng_seed(args.seed)
        x = data.test_x if args.split == "test" else data.train_x
        if config.guide == "nuts" and config.nuts_mode == "fixed-decoder" and args.split == "test":
            # NUTS drew z for the first --subset test points only
            x = x[: min(len(guide.keys), args.max_examples or len(x))]
        x = x[: args.max_examples] if args.max_examples else x
        results = evaluate(model, guide.posterior, x, args.iwae_samples, args.batch_size, args.progress)
        results.update(split=args.split, seed=args.seed, run_dir=str(args.run_dir))
        if getattr(guide, "last_fit_steps", None) is not None:  # q fitted per point at test time
            results["test_time_fit_steps"] = guide.last_fit_steps
        write_json(f"{args.run_dir}/eval.json", results)
    except (CheckpointError, DataError, UsageError) as error:
        exit_with("evaluate", error)
    print(format_table(results))
    print(f"wrote {args.run_dir}/eval.json")


if __name__ == "__main__":
    main()
