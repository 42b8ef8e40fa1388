"""NUTS speed on the fixed frozen-decoder problem: pyro_vae vs stock Pyro vs NumPyro.

    python benchmarks/nuts_speed.py [--skip-numpyro] [--skip-pyro] [--seeds 3] [--em-iterations 20]

The problem, the baselines and the table come from ``nuts_baselines.py``
(2 -> 32 -> 64 softplus decoder with seeded random weights, 100 binary
points, latent dim 2, one chain, 500 warm-up + 500 draws, min bulk ESS per
second of total wall time). Rows added here, all through
``pyro_vae.infer.mcmc.sampling.sample_latents`` on the registered ``bernoulli_mlp`` model
holding the same weights, torch on one thread (the tensors are small):

- ``pyro_vae, recorded``: ``compile=False``, the sampler's steps (the
  leaf step and the tree merge) recorded (``make_fx``)
  and run uncompiled;
- ``pyro_vae, compiled, 1st process``: ``compile=True`` in a fresh process
  with an empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR``): the seconds
  include recording and compiling;
- ``pyro_vae, compiled, 2nd process``: the same in a fresh process that finds
  the first one's Inductor cache on disk;
- ``pyro_vae, compiled, reused``: a second call in the same process, which
  finds the recordings kept (``mcmc.sampler_target``): the steady state of
  Monte Carlo EM's E-steps, ``compare`` and repeated calls.

A second table: Monte Carlo EM (``mcmc.monte_carlo_em``, 20 E-steps of one
chain, 100 + 100 iterations each, 20 Adam steps per M-step) uncompiled and
compiled, with the first round (its E-step records and compiles) apart from the
median of the others.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_header  # noqa: E402
from nuts_baselines import make_row, problem, report, run_baselines  # noqa: E402

from pyro_vae.infer.mcmc.sampling import monte_carlo_em, sample_latents  # noqa: E402
from pyro_vae.plumbing.registry import get_model  # noqa: E402


def project_model(weights):
    model = get_model("bernoulli_mlp")(data_dim=64, latent_dim=2, hidden_dims=(32,))
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.from_numpy(weights["W1"]))
        model.decoder[0].bias.copy_(torch.from_numpy(weights["b1"]))
        model.decoder[2].weight.copy_(torch.from_numpy(weights["W2"]))
        model.decoder[2].bias.copy_(torch.from_numpy(weights["b2"]))
    return model


def run(model, x, seed, compile):
    draws, _, seconds = sample_latents(model, x, chains=1, warmup=500, samples=500, seed=seed, compile=compile)
    return seconds, draws[0].numpy()


def worker(seed):
    """In a fresh process: one compiled run, then a second one reusing its recordings; JSON on stdout."""
    torch.set_num_threads(1)
    weights, x = problem()
    model, x = project_model(weights), torch.from_numpy(x)
    first, reused = run(model, x, seed, True), run(model, x, seed, True)
    print(json.dumps({"first": [first[0], first[1].tolist()], "reused": [reused[0], reused[1].tolist()]}))


def in_fresh_process(seed, cache_dir):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", str(seed)], capture_output=True, text=True,
                          env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir), check=True)
    process_seconds = time.perf_counter() - start
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return process_seconds, [(s, np.asarray(d)) for s, d in (out["first"], out["reused"])]


def monte_carlo_em_table(weights, x, iterations):
    print(f"\nMonte Carlo EM, {iterations} E-steps (1 chain, 100 + 100) and M-steps (20 Adam steps), 100 points\n")
    print("| sampler | total s | 1st round s | median other round s |\n|---|---|---|---|")
    for name, compile in [("recorded", False), ("compiled", True)]:
        model = project_model(weights)  # from the same weights each time
        start = time.perf_counter()
        history, _ = monte_carlo_em(model, x, iterations=iterations, warmup=100, samples=100, m_steps=20, lr=1e-3,
                                    seed=0, log=lambda *a: None,
                                    compile=compile)
        total = time.perf_counter() - start
        e_steps = [h["seconds"] for h in history]  # E-step and M-step
        print(f"| {name} | {total:.1f} | {e_steps[0]:.2f} | {statistics.median(e_steps[1:]):.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-numpyro", action="store_true")
    parser.add_argument("--skip-pyro", action="store_true", help="leave out stock Pyro (the slowest rows)")
    parser.add_argument("--seeds", type=int, default=3, help="run each sampler with seeds 0..SEEDS-1, report medians")
    parser.add_argument("--em-iterations", type=int, default=20)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker)
    print(machine_header(), "(stock Pyro's rows; pyro_vae's: 1 thread)", flush=True)
    weights, x = problem()
    rows = run_baselines(500, 500, args.seeds, args.skip_numpyro, skip_pyro=args.skip_pyro)
    torch.set_num_threads(1)
    model, x = project_model(weights), torch.from_numpy(x)
    recorded = [run(model, x, seed, False) for seed in range(args.seeds)]
    cold, warm, reused, processes = [], [], [], {"cold": [], "warm": []}
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as cache_dir:
            for name, runs in (("cold", cold), ("warm", warm)):
                process_seconds, (first, again) = in_fresh_process(seed, cache_dir)
                processes[name].append(process_seconds)
                runs.append(first)
                reused.append(again)
    rows.append(make_row("pyro_vae, recorded", recorded))
    rows.append(make_row("pyro_vae, compiled, 1st process", cold))
    rows.append(make_row("pyro_vae, compiled, 2nd process", warm))
    rows.append(make_row("pyro_vae, compiled, reused", reused))
    report(rows)
    print(f"\nwhole processes (imports, two runs): 1st {statistics.median(processes['cold']):.1f} s, "
          f"2nd {statistics.median(processes['warm']):.1f} s (medians over {args.seeds})")
    if args.em_iterations:
        monte_carlo_em_table(weights, x, args.em_iterations)


if __name__ == "__main__":
    main()
