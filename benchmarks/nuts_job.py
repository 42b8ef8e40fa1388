"""The whole ``fit --inference nuts`` job against NumPyro's whole process, on the same problem.

    python benchmarks/nuts_job.py [--decoder-from RUN] [--repeats 3] [--skip-numpyro]

What a user runs, once, on small data: ``python -m pyro_vae.fit --inference
nuts --decoder-from RUN`` at its defaults (the first 100 held-out digits,
latent 2, 4 chains, ``--warmup``/``--samples`` as fit's defaults, chains started
from the run's encoder q), timed from outside as a whole process: imports,
loading, recording, compiling, sampling, ArviZ's summary, the netCDF and the
checkpoint. Rows:

- ``pyro_vae default, empty cache``: the default command (``--compile auto``,
  which compiles at this size) with an empty Inductor cache
  (``TORCHINDUCTOR_CACHE_DIR`` fresh): a first run on a machine;
- ``pyro_vae default, warm cache``: the same command again, finding the
  first run's compiled kernels on disk;
- ``pyro_vae --compile off``: the steps recorded and run uncompiled;
- ``numpyro``: NumPyro's NUTS on the same decoder weights and points, 4 chains
  ``chain_method="vectorized"``, the same warm-up and draws, each chain
  started from its own draw of the same q, as a whole process (imports, JIT,
  sampling and ``az.summary``), in a separate interpreter
  (``NUMPYRO_PYTHON``, default ``/work/venv-numpyro/bin/python``; see
  ``nuts_baselines.py``).

The runs are interleaved (each repeat runs every row once) so that a noisy
machine slows them alike; the table gives medians over the repeats of wall
seconds, min bulk ESS, max R-hat and min bulk ESS per wall second, and the last
column the ratio to NumPyro's min ESS per second.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUMPYRO_PYTHON = Path(os.environ.get("NUMPYRO_PYTHON", "/work/venv-numpyro/bin/python"))
SUBSET, CHAINS = 100, 4


def train_decoder(out):
    """The digits run whose decoder and encoder the job uses: fit's defaults (latent 2, 100 epochs)."""
    subprocess.run([sys.executable, "-m", "pyro_vae.fit", "--guide", "amortized", "--out", str(out), "--no-progress"],
                   check=True, capture_output=True)
    return out


def export_problem(run, path):
    """The decoder weights, the first SUBSET test points and their q (loc, scale) as an .npz for NumPyro."""
    import torch

    from pyro_vae.program.posteriors import guide_posterior
    from pyro_vae.runs.rundir import load_run

    source = load_run(run, torch.device("cpu"))
    if source.model.name != "bernoulli_mlp" or source.config.activation != "softplus" or len(
            source.config.hidden_dims) != 1:
        raise SystemExit("nuts_job.py: the NumPyro twin is written for a one-hidden-layer softplus bernoulli_mlp run")
    x = source.data.test_x[:SUBSET]
    with torch.no_grad():
        q = guide_posterior(source.guide, x)
    first, last = source.model.decoder[0], source.model.decoder[2]
    arrays = {"W1": first.weight, "b1": first.bias, "W2": last.weight, "b2": last.bias, "x": x,
              "loc": q.base_dist.loc, "scale": q.base_dist.scale}
    np.savez(path, **{k: v.detach().numpy().astype(np.float32) for k, v in arrays.items()})
    return path


def numpyro_worker(problem_path, warmup, samples, seed):
    """Runs inside the NumPyro interpreter: the whole job; prints one JSON line."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import arviz as az
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    p = {k: jnp.asarray(v) for k, v in np.load(problem_path).items()}

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([p["loc"].shape[-1]]).to_event(1))
            h = jax.nn.softplus(z @ p["W1"].T + p["b1"])
            numpyro.sample("x", dist.Bernoulli(logits=h @ p["W2"].T + p["b2"]).to_event(1), obs=x)

    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    z0 = p["loc"] + p["scale"] * jax.random.normal(init_key, (CHAINS, *p["loc"].shape))
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=samples, num_chains=CHAINS,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(key, p["x"], init_params={"z": z0})
    summary = az.summary(az.from_numpyro(mcmc), kind="diagnostics")
    print(json.dumps({"min_ess_bulk": float(summary["ess_bulk"].min()), "max_r_hat": float(summary["r_hat"].max()),
                      "versions": f"numpyro {numpyro.__version__}, jax {jax.__version__}"}))


def timed(cmd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc


def pyro_vae_job(run, out, cache, extra):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "pyro_vae.fit", "--inference", "nuts", "--decoder-from", str(run),
           "--out", str(out), "--no-progress", *extra]
    seconds, proc = timed(cmd, env)
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds": seconds, "min_ess_bulk": summary["min_ess_bulk"], "max_r_hat": summary["max_r_hat"],
            "warnings": len(summary["warnings"])}


def numpyro_job(problem, warmup, samples, seed):
    from machine import numpyro_env  # not at the top: the NumPyro interpreter runs this file without torch

    cmd = [str(NUMPYRO_PYTHON), str(Path(__file__).resolve()), "--numpyro-worker", str(problem),
           "--warmup", str(warmup), "--samples", str(samples), "--seed", str(seed)]
    seconds, proc = timed(cmd, numpyro_env())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    warnings = int(result["max_r_hat"] > 1.01) + int(result["min_ess_bulk"] < 100 * CHAINS)
    return {"seconds": seconds, **result, "warnings": warnings}


def print_row(name, runs, reference=None):
    median = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "min_ess_bulk", "max_r_hat", "warnings")}
    rate = statistics.median(r["min_ess_bulk"] / r["seconds"] for r in runs)
    ratio = f"{rate / reference:.2f}x" if reference else "-"
    walls = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    print(f"| {name} | {median['seconds']:.1f} ({walls}) | {median['min_ess_bulk']:.0f} | {median['max_r_hat']:.3f} | "
          f"{median['warnings']:.0f} | {rate:.1f} | {ratio} |", flush=True)
    return rate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--decoder-from", metavar="RUN", help="the digits run (default: train one with fit's defaults)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-numpyro", action="store_true")
    p.add_argument("--numpyro-worker", metavar="NPZ", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, help="default: fit's")
    p.add_argument("--samples", type=int, help="default: fit's")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.numpyro_worker:
        return numpyro_worker(args.numpyro_worker, args.warmup, args.samples, args.seed)
    from machine import machine_header
    from pyro_vae.runs.config import MCMCSettings

    print(machine_header(), "(this process; the timed jobs are processes of their own)", flush=True)
    warmup = args.warmup or MCMCSettings.warmup
    samples = args.samples or MCMCSettings.samples
    lengths = ["--warmup", str(warmup), "--samples", str(samples)]
    work = Path(tempfile.mkdtemp(prefix="nuts_job-"))
    run = Path(args.decoder_from) if args.decoder_from else train_decoder(work / "digits")
    problem = export_problem(run, work / "problem.npz")
    with_numpyro = not args.skip_numpyro and NUMPYRO_PYTHON.exists()
    if not with_numpyro and not args.skip_numpyro:
        print(f"NumPyro skipped: {NUMPYRO_PYTHON} not found (see nuts_baselines.py)")
    print(f"decoder {run}; {SUBSET} points, {CHAINS} chains x ({warmup} + {samples}); {os.cpu_count()} CPUs; "
          f"whole processes, {args.repeats} repeats interleaved", flush=True)
    rows = {"pyro_vae default, empty cache": [], "pyro_vae default, warm cache": [], "pyro_vae --compile off": [],
            "numpyro": []}
    for repeat in range(args.repeats):
        cache = work / f"inductor-{repeat}"
        rows["pyro_vae default, empty cache"].append(pyro_vae_job(run, work / f"cold-{repeat}", cache, lengths))
        rows["pyro_vae default, warm cache"].append(pyro_vae_job(run, work / f"warm-{repeat}", cache, lengths))
        rows["pyro_vae --compile off"].append(
            pyro_vae_job(run, work / f"off-{repeat}", cache, [*lengths, "--compile", "off"]))
        if with_numpyro:
            rows["numpyro"].append(numpyro_job(problem, warmup, samples, repeat))
        print(f"repeat {repeat + 1}: " + "; ".join(f"{name} {runs[-1]['seconds']:.1f}s" for name, runs in rows.items()
                                                  if runs), flush=True)
    print("\n| whole process | wall s, median (runs) | min bulk ESS | max R-hat | warnings | min ESS per wall s "
          "| vs numpyro |\n|---|---|---|---|---|---|---|")
    reference = print_row("numpyro", rows["numpyro"]) if with_numpyro else None
    for name, runs in rows.items():
        if name != "numpyro":
            print_row(name, runs, reference)
    if with_numpyro:
        print(f"({rows['numpyro'][0]['versions']}, JAX on CPU)")


if __name__ == "__main__":
    main()
