"""NUTS speed on the fixed frozen-decoder problem: pyro_vae vs stock Pyro vs NumPyro.

    python benchmarks/nuts_speed.py [--skip-numpyro] [--seeds 3]

The problem, the baselines and the table come from ``nuts_baselines.py``
(2 -> 32 -> 64 softplus decoder with seeded random weights, 100 binary
points, latent dim 2, one chain, 500 warm-up + 500 draws, min bulk ESS per
second of total wall time). Rows added here, all through
``pyro_vae.mcmc.sample_latents`` on the registered ``bernoulli_mlp`` model
holding the same weights:

- ``pyro_vae``: 500 + 500 from the same default initialisation as Pyro's
  (uniform in [-2, 2]);
- ``pyro_vae (torch.set_num_threads(1))``: the same with torch on one
  thread (the tensors are small: threads cost more than they bring);
- ``pyro_vae (mean-field init, 150 warm-up)``: chains start from a draw of
  the per-point mean-field fit (``fit_local_posterior``, its time included)
  and warm up for 150 steps instead of 500, then 500 draws.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuts_baselines import make_row, problem, report, run_baselines  # noqa: E402

from pyro_vae.local_fit import fit_local_posterior  # noqa: E402
from pyro_vae.mcmc import sample_latents  # noqa: E402
from pyro_vae.registry import get_model  # noqa: E402


def project_model(weights):
    model = get_model("bernoulli_mlp")(data_dim=64, latent_dim=2, hidden_dims=(32,))
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.from_numpy(weights["W1"]))
        model.decoder[0].bias.copy_(torch.from_numpy(weights["b1"]))
        model.decoder[2].weight.copy_(torch.from_numpy(weights["W2"]))
        model.decoder[2].bias.copy_(torch.from_numpy(weights["b2"]))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-numpyro", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="run each sampler with seeds 0..SEEDS-1, report medians")
    args = parser.parse_args()
    weights, x = problem()
    x = torch.from_numpy(x)
    model = project_model(weights)
    rows = run_baselines(500, 500, args.seeds, args.skip_numpyro)

    default, one_thread, warm = [], [], []
    threads = torch.get_num_threads()
    for seed in range(args.seeds):
        draws, _, seconds = sample_latents(model, x, chains=1, warmup=500, samples=500, seed=seed)
        default.append((seconds, draws[0].numpy()))
        torch.set_num_threads(1)
        draws, _, seconds = sample_latents(model, x, chains=1, warmup=500, samples=500, seed=seed)
        one_thread.append((seconds, draws[0].numpy()))
        torch.set_num_threads(threads)
        start = time.perf_counter()
        q, steps = fit_local_posterior(model, x)
        draws, _, _ = sample_latents(model, x, chains=1, warmup=150, samples=500, init=q, seed=seed)
        warm.append((time.perf_counter() - start, draws[0].numpy()))
    rows.append(make_row("pyro_vae", default))
    rows.append(make_row("pyro_vae (torch.set_num_threads(1))", one_thread))
    rows.append(make_row("pyro_vae (mean-field init, 150 warm-up)", warm))
    report(rows)


if __name__ == "__main__":
    main()
