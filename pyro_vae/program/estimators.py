"""Estimators of log p(x) and of the ELBO, for any model and any q(z | x).

All figures are in nats per example. ``proposal(x_batch)`` returns q(z | x)
with batch shape (len(x_batch),), a torch distribution over the model's one
latent site or a posterior over several (``pyro_vae.program.posteriors``: dict
values, the guide's whole program); ``fixed`` holds the model's global values
(``density.plug_in_values``). Every density comes from the model's program
(``pyro_vae.program.density``).

- log weights: log w = log p(x, z) - log q(z | x), z ~ q;
- ``log_likelihood``: the importance-weighted bound (Burda et al. 2015)
  log p(x) >= E log (1/K) sum_k w_k, per example, tightening as K grows;
- ``elbo_terms``: E_q[log p(x | z)], E_q[log q(z | x) - log p(z)] and the
  ELBO, their difference, per example from ``samples`` draws (the one ELBO
  estimator: a run's test ELBO, ``evaluate``'s terms, ``compare``'s rows);
- for a model whose latents are all discrete (``pyro_vae.program.enumeration``) every figure is an exact
  sum over their values: log p(x) needs no proposal, the ELBO terms are sums over q's K values;
- ``active_units``: latent dimensions whose variance over x of E_q[z | x]
  exceeds 0.01 (Burda et al. 2015).
"""

import math

import torch
from tqdm import tqdm

from pyro_vae.program.density import log_joint, log_joint_terms
from pyro_vae.program.enumeration import exact_terms, summed_out
from pyro_vae.program.posteriors import flat_mean

ACTIVE_UNIT_THRESHOLD = 0.01
# Particles are drawn in chunks so that one chunk's (particles x examples x data_dim) tensors stay near
# this many elements, by device type. On CPU the decoder's elementwise passes (bias, softplus, the
# Bernoulli's log density) cost as much as its matrix multiplies and run at the speed of memory: with
# chunks of 4 MB of float32, which a 32 MB L3 holds several of, log p(x) at K = 300 on 100 MNIST-sized
# points (784-400-50) took 0.47 the time of 64 MB chunks (1 thread, AVX-512 AMD EPYC, medians of 5
# interleaved runs; 2^19 and 2^21 elements within 10%). A GPU is fed large chunks: no Python per
# small chunk, and kernels that fill the device.
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**24}


def log_weights(model, q, x, z, fixed=None):
    """log p(x, z) - log q(z), shape ``z.shape[:-1]``."""
    return log_joint(model, x, z, fixed) - q.log_prob(z)


@torch.no_grad()
def log_likelihood(model, proposal, x, num_samples=5000, batch_size=100, progress=False, fixed=None):
    """Importance-weighted estimate of log p(x) for each row of ``x``:
    log (1/K) sum_k w_k, accumulated chunk by chunk with logaddexp, so memory
    does not grow with K; q(z | x) is built once per batch of ``batch_size``
    rows and drawn from chunk by chunk (``CHUNK_ELEMENTS``). Returns a tensor
    of shape (len(x),)."""
    results = []
    batches = x.split(batch_size)
    for x_batch in tqdm(batches, desc=f"log p(x), K={num_samples}", disable=not progress, leave=False):
        q = proposal(x_batch)
        if summed_out(model, x_batch, fixed):  # every latent discrete: log p(x) is a finite sum, exact
            results.append(log_joint(model, x_batch, {}, fixed))
            continue
        elements = CHUNK_ELEMENTS.get(x_batch.device.type, CHUNK_ELEMENTS["cuda"])
        chunk = max(1, min(num_samples, elements // (len(x_batch) * x_batch.shape[-1])))
        total = torch.full((len(x_batch),), -math.inf, device=x_batch.device)
        for start in range(0, num_samples, chunk):
            z = q.sample((min(chunk, num_samples - start),))
            total = torch.logaddexp(total, log_weights(model, q, x_batch, z, fixed).logsumexp(0))
        results.append(total - math.log(num_samples))
    return torch.cat(results)


@torch.no_grad()
def elbo_terms(model, proposal, x, *, samples=1, batch_size=1000, fixed=None):
    """Per example, (reconstruction, kl, elbo): the means over ``samples``
    draws z ~ q(z | x) = ``proposal(x_batch)`` of log p(x | z) and of
    log q(z | x) - log p(z), and their difference, the ELBO estimate. Each
    is a tensor of shape (len(x),)."""
    reconstruction, kl = [], []
    for x_batch in x.split(batch_size):
        q = proposal(x_batch)
        terms = exact_terms(model, q, x_batch, fixed) if summed_out(model, x_batch, fixed) else None
        if terms is not None:  # sums over a discrete latent's values, exact
            reconstruction.append(terms[0])
            kl.append(terms[1])
            continue
        z = q.sample((samples,))
        log_lik, log_prior = log_joint_terms(model, x_batch, z, fixed)
        reconstruction.append(log_lik.mean(0))
        kl.append((q.log_prob(z) - log_prior).mean(0))
    reconstruction, kl = torch.cat(reconstruction), torch.cat(kl)
    return reconstruction, kl, reconstruction - kl


@torch.no_grad()
def active_units(proposal, x, batch_size=1000, threshold=ACTIVE_UNIT_THRESHOLD):
    """(count, per-dimension variances) of E_q[z | x] over the rows of x."""
    return count_active(torch.cat([proposal(x_batch).mean for x_batch in x.split(batch_size)]), threshold)


def count_active(means, threshold=ACTIVE_UNIT_THRESHOLD):
    """(count, per-dimension variances) of posterior means over the points."""
    variances = means.var(0)
    return int((variances > threshold).sum()), variances


def mean_and_se(values):
    """(mean, standard error over the entries) of a 1-D tensor."""
    values = values.double()
    se = values.std() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def evaluate(model, proposal, x, num_samples=5000, batch_size=100, progress=False, fixed=None, indexed=False):
    """Every figure of ``eval.json`` for ``model`` on ``x``.

    ``proposal(x_batch)`` returns q(z | x) for a batch; with ``indexed``,
    ``proposal(x_batch, rows)``, ``rows`` the batch's positions in ``x``, for
    a posterior kept per point (an MCMC run's) and looked up by them. It is
    asked once per batch and its q reused for every figure: for a meanfield
    run asking means an optimisation per point."""
    ll, reconstruction, kl, means = [], [], [], []
    starts = range(0, len(x), batch_size)
    for start in tqdm(starts, desc=f"evaluate, K={num_samples}", disable=not progress, leave=False):
        x_batch = x[start: start + batch_size]
        rows = torch.arange(start, start + len(x_batch), device=x.device)
        q = proposal(x_batch, rows) if indexed else proposal(x_batch)
        same_q = lambda _, q=q: q  # noqa: E731
        ll.append(log_likelihood(model, same_q, x_batch, num_samples, len(x_batch), fixed=fixed))
        batch_reconstruction, batch_kl, _ = elbo_terms(model, same_q, x_batch, batch_size=len(x_batch), fixed=fixed)
        reconstruction.append(batch_reconstruction)
        kl.append(batch_kl)
        means.append(flat_mean(q.mean))
    ll, reconstruction, kl = torch.cat(ll), torch.cat(reconstruction), torch.cat(kl)
    count, variances = count_active(torch.cat(means))
    results = {"num_examples": len(x), "iwae_samples": num_samples}
    for name, values in [("log_likelihood", ll), ("elbo", reconstruction - kl), ("reconstruction", reconstruction),
                         ("kl", kl)]:
        results[name], results[f"{name}_se"] = mean_and_se(values)
    results["log_likelihood_minus_elbo"] = results["log_likelihood"] - results["elbo"]
    results["active_units"] = count
    results["latent_variances"] = variances.tolist()
    with torch.no_grad():
        exact = model.log_marginal(x) if hasattr(model, "log_marginal") else None  # None: not affordable here
    if exact is not None:
        results["exact_log_likelihood"], results["exact_log_likelihood_se"] = mean_and_se(exact)
    return results
