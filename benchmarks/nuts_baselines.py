"""NUTS baselines on a frozen-decoder posterior: stock Pyro (eager, JIT) vs NumPyro.

    python benchmarks/nuts_baselines.py                  # all methods, 500 + 500
    python benchmarks/nuts_baselines.py --skip-numpyro   # Pyro only
    python benchmarks/nuts_baselines.py --warmup 200 --samples 200 --seeds 3

The problem (fixed, from the issue tracker):

- a frozen decoder 2 -> 32 -> 64: ``Linear(2, 32)``, softplus,
  ``Linear(32, 64)`` giving Bernoulli logits;
- 100 binary points of 64 dims drawn from it: ``z_i ~ N(0, I_2)``,
  ``x_i ~ Bernoulli(sigmoid(decoder(z_i)))``;
- target: the posterior over the 100 local latents ``z_1..z_100``
  (200 dims) given the frozen decoder and the prior ``N(0, I)``;
- one chain, ``--warmup`` warm-up and ``--samples`` draws (500 each by
  default), NUTS with default settings (step size and diagonal mass matrix
  adapted, default initialisation).

Seed conventions (``problem(seed=0)``; nothing is saved to disk, every
process regenerates the same numbers): one ``np.random.default_rng(0)``,
drawn from in this order, all ``standard_normal`` / ``random`` in float64:

1. ``W1``, shape (32, 2), times 1/sqrt(2);
2. ``W2``, shape (64, 32), times 1/sqrt(32);
3. ``z``, shape (100, 2) (the true latents, not returned);
4. ``u``, shape (100, 64) uniform; ``x = (u < sigmoid(logits))``.

Weights are stored in torch's ``nn.Linear`` layout ``(out, in)``; biases are
zero. Weights and ``x`` are returned as float32, and both Pyro and NumPyro
compute in float32. ``--seeds K`` runs every sampler with seeds 0..K-1
(``pyro.set_rng_seed`` / ``jax.random.PRNGKey``; never the problem's seed)
and the table reports medians over them: the min bulk ESS of 500 draws
varies by a third from seed to seed.

Methods, each timed wall-clock over the whole ``run`` (warm-up included):

1. ``pyro``: ``pyro.infer.NUTS`` + ``pyro.infer.MCMC``, ``jit_compile=False``,
   the decoder an ``nn.Module`` with ``requires_grad_(False)`` and not
   registered with ``pyro.module``;
2. ``pyro (jit)``: the same with ``jit_compile=True, ignore_jit_warnings=True``;
3. ``numpyro (1st, incl. JIT)`` and ``numpyro (2nd, compiled)``: NumPyro NUTS
   on the identical model and data, run in a subprocess with the separate
   interpreter ``/work/venv-numpyro/bin/python`` (override with the
   ``NUMPYRO_PYTHON`` environment variable) on CPU (``JAX_PLATFORMS=cpu``),
   two ``MCMC.run`` calls with the same key in one process, no progress bar.
   The subprocess prints the draws as JSON on stdout.

For every method: min bulk ESS over the 200 latent coordinates
(``arviz.ess(..., method="bulk")``, computed in this process for all methods)
and min bulk ESS per second; the last column is each method's ESS/s over
NumPyro's compiled run. Torch's thread count is left as it is.

To put another method in the same table::

    from nuts_baselines import problem, report, run_baselines, min_bulk_ess
    rows = run_baselines()
    weights, x = problem()
    ...  # time your sampler, draws of shape (n_draws, 100, 2)
    rows.append(make_row("mine", [(seconds, draws)]))
    report(rows)
"""

import argparse
import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

N_DATA = 100
LATENT_DIM = 2
HIDDEN_DIM = 32
DATA_DIM = 64
PROBLEM_SEED = 0

NUMPYRO_PYTHON = Path(os.environ.get("NUMPYRO_PYTHON", "/work/venv-numpyro/bin/python"))
REFERENCE = "numpyro (2nd, compiled)"


# --------------------------------------------------------------------------- problem


def problem(seed=PROBLEM_SEED):
    """(weights, x): decoder weights as float32 numpy arrays in nn.Linear layout, data (100, 64)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((HIDDEN_DIM, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    w2 = rng.standard_normal((DATA_DIM, HIDDEN_DIM)) / np.sqrt(HIDDEN_DIM)
    b1 = np.zeros(HIDDEN_DIM)
    b2 = np.zeros(DATA_DIM)
    z = rng.standard_normal((N_DATA, LATENT_DIM))
    logits = np.logaddexp(0.0, z @ w1.T + b1) @ w2.T + b2
    u = rng.random((N_DATA, DATA_DIM))
    x = (u < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    weights = {name: a.astype(np.float32) for name, a in [("W1", w1), ("b1", b1), ("W2", w2), ("b2", b2)]}
    return weights, x


# --------------------------------------------------------------------------- Pyro


def torch_decoder(weights):
    """The frozen decoder as an nn.Module with the given weights, no gradients."""
    import torch
    from torch import nn

    decoder = nn.Sequential(nn.Linear(LATENT_DIM, HIDDEN_DIM), nn.Softplus(), nn.Linear(HIDDEN_DIM, DATA_DIM))
    with torch.no_grad():
        decoder[0].weight.copy_(torch.from_numpy(weights["W1"]))
        decoder[0].bias.copy_(torch.from_numpy(weights["b1"]))
        decoder[2].weight.copy_(torch.from_numpy(weights["W2"]))
        decoder[2].bias.copy_(torch.from_numpy(weights["b2"]))
    return decoder.requires_grad_(False)


def pyro_model_fn(decoder):
    """The natural Pyro model: a plate over data, local z, Bernoulli likelihood."""
    import pyro
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT_DIM]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    return model


def run_pyro(weights, x, warmup, samples, seed, jit):
    """Stock Pyro NUTS; returns (seconds, draws of shape (samples, 100, 2))."""
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = pyro_model_fn(torch_decoder(weights))
    kernel = NUTS(model, jit_compile=jit, ignore_jit_warnings=jit)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=1, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run(torch.from_numpy(x))
    draws = mcmc.get_samples()["z"].detach().numpy()
    return time.perf_counter() - start, draws


# --------------------------------------------------------------------------- NumPyro


def numpyro_worker(warmup, samples, seeds):
    """Runs inside /work/venv-numpyro: a first MCMC.run (seed 0, compiling), then one compiled
    run per seed; prints JSON with times and draws."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    weights, x_np = problem()
    w = {name: jnp.asarray(a) for name, a in weights.items()}

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT_DIM]).to_event(1))
            h = jax.nn.softplus(z @ w["W1"].T + w["b1"])
            numpyro.sample("x", dist.Bernoulli(logits=h @ w["W2"].T + w["b2"]).to_event(1), obs=x)

    x = jnp.asarray(x_np)
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=samples, num_chains=1, progress_bar=False)
    runs = []
    for name, seed in [("numpyro (1st, incl. JIT)", 0)] + [(REFERENCE, seed) for seed in range(seeds)]:
        start = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed), x)
        draws = np.asarray(jax.block_until_ready(mcmc.get_samples()["z"]))
        runs.append({"name": name, "seconds": time.perf_counter() - start, "draws": draws.tolist()})
    out = {
        "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__},
        "devices": [str(d) for d in jax.devices()],
        "same_draws": bool(np.array_equal(runs[0]["draws"], runs[1]["draws"])),
        "runs": runs,
    }
    print(json.dumps(out))


def run_numpyro(warmup, samples, seeds):
    """NumPyro in a subprocess; returns (info dict, [(name, seconds, draws), ...]), or None if unavailable."""
    if not NUMPYRO_PYTHON.exists():
        print(f"NumPyro skipped: {NUMPYRO_PYTHON} not found (create /work/venv-numpyro with numpyro, jax, jaxlib, arviz, numpy).")
        return None
    from machine import numpyro_env  # not at the top: the NumPyro interpreter runs this file without torch

    env = numpyro_env()
    cmd = [str(NUMPYRO_PYTHON), str(Path(__file__).resolve()), "--numpyro-worker",
           "--warmup", str(warmup), "--samples", str(samples), "--seeds", str(seeds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"NumPyro skipped: worker exited with {proc.returncode}; its stderr ends with:")
        print(proc.stderr[-2000:])
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = [(r["name"], r["seconds"], np.asarray(r["draws"])) for r in out.pop("runs")]
    return out, runs


# --------------------------------------------------------------------------- table


def min_bulk_ess(draws):
    """Min arviz bulk ESS over all latent coordinates; draws has shape (n_draws, ...), one chain."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz's refactor notice on import
        import arviz as az
    draws = np.asarray(draws, dtype=np.float64)
    flat = draws.reshape(1, draws.shape[0], -1)
    ess = az.ess(az.convert_to_dataset({"z": flat}), method="bulk")["z"].values
    return float(np.min(ess))


def make_row(name, runs):
    """A table row from runs [(seconds, draws), ...] of one method: medians over the runs."""
    seconds = [run[0] for run in runs]
    ess = [min_bulk_ess(run[1]) for run in runs]
    return {"name": name, "runs": len(runs), "seconds": float(np.median(seconds)), "min_ess_bulk": float(np.median(ess)),
            "ess_per_second": float(np.median([e / t for e, t in zip(ess, seconds)]))}


def report(rows, reference=REFERENCE):
    """Print the table; the last column is ESS/s relative to the row named `reference` (if present)."""
    ref = next((r["ess_per_second"] for r in rows if r["name"] == reference), None)
    width = max(len("method"), *(len(r["name"]) for r in rows))
    print("medians over the runs of each method")
    print(f"{'method':<{width}}  {'runs':>4}  {'seconds':>9}  {'min bulk ESS':>12}  {'min ESS/s':>10}  "
          f"{'vs ' + reference:>{len(reference) + 3}}")
    for r in rows:
        ratio = f"{r['ess_per_second'] / ref:.4f}" if ref else "-"
        print(f"{r['name']:<{width}}  {r['runs']:>4}  {r['seconds']:>9.2f}  {r['min_ess_bulk']:>12.1f}  "
              f"{r['ess_per_second']:>10.3f}  {ratio:>{len(reference) + 3}}")


def run_baselines(warmup=500, samples=500, seeds=1, skip_numpyro=False, skip_pyro=False):
    """All baseline methods on problem(), each with seeds 0..seeds-1; a list of row dicts."""
    weights, x = problem()
    rows = []
    for name, jit in [] if skip_pyro else [("pyro", False), ("pyro (jit)", True)]:
        rows.append(make_row(name, [run_pyro(weights, x, warmup, samples, seed, jit) for seed in range(seeds)]))
    if not skip_numpyro:
        result = run_numpyro(warmup, samples, seeds)
        if result is not None:
            info, runs = result
            print(f"NumPyro {info['versions']['numpyro']}, jax {info['versions']['jax']}, "
                  f"devices {info['devices']}; compiled seed-0 draws identical to the 1st run's: {info['same_draws']}")
            for name in dict.fromkeys(name for name, _, _ in runs):
                rows.append(make_row(name, [(seconds, draws) for n, seconds, draws in runs if n == name]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=1, help="run each sampler with seeds 0..SEEDS-1, report medians")
    parser.add_argument("--skip-numpyro", action="store_true")
    parser.add_argument("--numpyro-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.numpyro_worker:
        numpyro_worker(args.warmup, args.samples, args.seeds)
        return

    from machine import machine_header

    print(machine_header())
    print(f"{N_DATA} points x {DATA_DIM} dims, {N_DATA * LATENT_DIM} latent dims; "
          f"warmup {args.warmup}, samples {args.samples}, seeds {args.seeds}")
    rows = run_baselines(args.warmup, args.samples, args.seeds, args.skip_numpyro)
    report(rows)


if __name__ == "__main__":
    main()
