"""Throughput of the importance-weighted log-likelihood, against this machine's matmul peak.

    python benchmarks/eval_speed.py --data-dir ../shared/data/mnist [--examples 200] [--full] [--run RUN_DIR]

Measures, in one run:
1. the matrix-multiply peak: float32 ``torch.mm`` of 2048 x 2048 matrices
   (median of repeats), in GFLOP/s;
2. ``pyro_vae.evaluate.log_likelihood`` with K = 5000 on the first
   ``--examples`` MNIST test images, for the 784-400-50 Bernoulli decoder
   (a trained run's with ``--run``, else freshly initialised: the cost is the
   same), as decoder evaluations per second and the FLOP rate of the
   decoder's two matrix multiplies as a fraction of the peak;
3. with ``--full``, the wall time of K = 5000 over the whole 10,000-image test set.
"""

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.program.estimators import log_likelihood
from pyro_vae.plumbing.registry import get_guide, get_model


def matmul_peak(device, n=2048, repeats=10):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--full", action="store_true", help="also time the whole test set")
    parser.add_argument("--run", help="a trained MNIST run directory (784-400-50)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    pyro.set_rng_seed(0)

    if args.run:
        from pyro_vae import load_run

        model, guide, data, _, _ = load_run(args.run, device)
    else:
        data = load_dataset("mnist", args.data_dir, "dynamic", device)
        model = get_model("bernoulli_mlp")(784, 50, (400,)).to(device).eval()
        guide = get_guide("amortized")(model, data.num_train, (400,)).to(device).eval()
    hidden = model.decoder[0].out_features
    flops_per_eval = 2 * (model.latent_dim * hidden + hidden * model.data_dim)

    peak = matmul_peak(device)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak (float32 2048^3 mm, median): {peak / 1e9:.1f} GFLOP/s")

    def timed(x):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        ll = log_likelihood(model, guide.posterior, x, args.iwae_samples)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ll, time.perf_counter() - start

    timed(data.test_x[:10])  # warm-up
    x = data.test_x[: args.examples]
    ll, seconds = timed(x)
    evals = len(x) * args.iwae_samples / seconds
    print(f"log_likelihood, K={args.iwae_samples}, {len(x)} examples: {seconds:.2f}s, "
          f"{evals:,.0f} decoder evaluations/s, {evals * flops_per_eval / 1e9:.1f} GFLOP/s in decoder matmuls "
          f"= {evals * flops_per_eval / peak:.0%} of the matmul peak (mean log p(x) {ll.mean():.2f})")
    if args.full:
        ll, seconds = timed(data.test_x)
        print(f"full test set ({len(data.test_x)} examples), K={args.iwae_samples}: {seconds:.1f}s "
              f"({seconds / 60:.1f} min), mean log p(x) {ll.mean():.2f}")


if __name__ == "__main__":
    main()
