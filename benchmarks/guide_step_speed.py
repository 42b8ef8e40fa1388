"""Time per SVI step on MNIST for each guide of the same model, and for the
meanfield guide at two dataset sizes.

    python benchmarks/guide_step_speed.py --data-dir ../shared/data/mnist

Model: ``bernoulli_mlp`` 50-400-784; guides: ``amortized`` (784-400-100
encoder) and ``meanfield`` (60,000 x 50 local means and log-scales, sparse
rows, SparseAdam). Blocks of steps alternate between configurations; the
figures are medians of per-block ms/step, and the ratio to amortized.
Also: test-time inference cost per new point for the meanfield guide
(``fit_local_posterior``) against one encoder pass.
"""

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.infer.local_fit import fit_local_posterior
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.infer.svi.train import make_svi

from machine import machine_header


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="steps per block")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    device = torch.device(args.device)
    data = load_dataset("mnist", args.data_dir, "dynamic", device)
    pyro.set_rng_seed(0)

    def setup(guide_name, num_data):
        model = get_model("bernoulli_mlp")(784, 50, (400,)).to(device)
        guide = get_guide(guide_name)(model, num_data, (400,)).to(device)
        return model, guide, make_svi(model, guide, 1e-3, local_lr=1e-2), num_data

    configs = {"amortized N=60000": setup("amortized", 60000), "meanfield N=60000": setup("meanfield", 60000),
               "meanfield N=600": setup("meanfield", 600)}
    times = {name: [] for name in configs}
    for block in range(args.blocks + 1):
        for name, (model, guide, svi, n) in configs.items():
            pyro.clear_param_store()
            idx_all = torch.randperm(n, device=device)
            start = time.perf_counter()
            for step in range(args.steps):
                idx = idx_all[(step * args.batch_size) % max(1, n - args.batch_size):][: args.batch_size]
                svi.step(data.train_batch(idx), idx, n)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if block > 0:  # the first block warms up
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    base = statistics.median(times["amortized N=60000"])
    print(f"{'configuration':<22}{'ms/step (median)':>18}{'ratio':>8}")
    for name, t in times.items():
        print(f"{name:<22}{statistics.median(t):>18.2f}{statistics.median(t) / base:>8.2f}")

    model, guide = configs["amortized N=60000"][:2]
    x = data.test_x[:100]
    start = time.perf_counter()
    q, steps = fit_local_posterior(model, x)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        guide.posterior(x)
    encoder_seconds = time.perf_counter() - start
    print(f"new points: meanfield test-time fit {fit_seconds / len(x) * 1e3:.2f} ms/point ({steps} Adam steps, batch of "
          f"{len(x)}); encoder {encoder_seconds / len(x) * 1e3:.4f} ms/point; ratio {fit_seconds / encoder_seconds:.0f}x")


if __name__ == "__main__":
    main()
