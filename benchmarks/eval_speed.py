"""Throughput of the importance-weighted log-likelihood, against this machine's matmul peak.

    python benchmarks/eval_speed.py --data-dir ../shared/data/mnist [--examples 200] [--repeats 3]
        [--chunk-elements 1048576,16777216] [--full] [--run RUN_DIR]

Prints the processor (``machine.py``), then measures, in one run, interleaved ``--repeats`` times
(medians):
1. the matrix-multiply peak, float32 ``torch.mm`` on the current threads, two ways: 2048 x 2048
   squares, and the decoder's own two products at the rows one chunk of particles has
   (``estimators.CHUNK_ELEMENTS``): (rows, 50) x (50, 400) and (rows, 400) x (400, 784);
2. ``pyro_vae.program.estimators.log_likelihood`` with K = 5000 on the first ``--examples`` MNIST
   test images, for the 784-400-50 Bernoulli decoder (a trained run's with ``--run``, else freshly
   initialised: the cost is the same), once per chunk size of ``--chunk-elements`` (default: the
   estimator's own for the device, and 2^24, its size before issue #37), as decoder evaluations per
   second and the FLOP rate of the decoder's two matrix multiplies against both peaks;
3. with ``--full``, the wall time of K = 5000 over the whole 10,000-image test set.
"""

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.data import load_dataset
from pyro_vae.program import estimators
from pyro_vae.plumbing.registry import get_guide, get_model

from machine import machine_header


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device, shapes):
    """GFLOP/s of one pass of ``torch.mm`` over the (m, k) x (k, n) ``shapes``, median of 5 after a warm-up."""
    factors = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    rates = []
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        for a, b in factors:
            torch.mm(a, b)
        synchronize(device)
        rates.append(flops / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates[1:])


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--chunk-elements", help="comma-separated chunk sizes to compare (default: the "
                                                 "estimator's for the device, and 2^24)")
    parser.add_argument("--full", action="store_true", help="also time the whole test set")
    parser.add_argument("--run", help="a trained MNIST run directory (784-400-50)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def main():
    args = parse()
    device = torch.device(args.device)
    print(machine_header(), flush=True)
    if args.run:
        from pyro_vae import load_run

        model, guide, data, _, _ = load_run(args.run, device)
    else:
        data = load_dataset("mnist", args.data_dir, "dynamic", device)
        model = get_model("bernoulli_mlp")(784, 50, (400,)).to(device).eval()
        guide = get_guide("amortized")(model, data.num_train, (400,)).to(device).eval()
    hidden = model.decoder[0].out_features
    flops_per_eval = 2 * (model.latent_dim * hidden + hidden * model.data_dim)
    own = estimators.CHUNK_ELEMENTS.get(device.type, estimators.CHUNK_ELEMENTS["cuda"])
    sizes = ([int(c) for c in args.chunk_elements.split(",")] if args.chunk_elements
             else list(dict.fromkeys([own, 2**24])))
    x = data.test_x[: args.examples]
    batch = min(100, len(x))  # log_likelihood's batch_size

    def timed(x, elements, samples):
        estimators.CHUNK_ELEMENTS = {device.type: elements, "cuda": elements}
        pyro.set_rng_seed(0)
        synchronize(device)
        start = time.perf_counter()
        ll = estimators.log_likelihood(model, guide.posterior, x, samples)
        synchronize(device)
        return ll, time.perf_counter() - start

    def decoder_shapes(elements):
        rows = max(1, min(args.iwae_samples, elements // (batch * model.data_dim))) * batch
        return [(rows, model.latent_dim, hidden), (rows, hidden, model.data_dim)]

    for elements in sizes:
        timed(data.test_x[:10], elements, 200)  # warm-up
    seconds, lls, square, shaped = {e: [] for e in sizes}, {}, [], {e: [] for e in sizes}
    for _ in range(args.repeats):
        square.append(matmul_rate(device, [(2048, 2048, 2048)]))
        for elements in sizes:
            shaped[elements].append(matmul_rate(device, decoder_shapes(elements)))
            lls[elements], wall = timed(x, elements, args.iwae_samples)
            seconds[elements].append(wall)
    peak = statistics.median(square)
    print(f"matmul peak, float32 2048^3 mm: {peak:.1f} GFLOP/s (median of {args.repeats})")
    base = statistics.median(seconds[sizes[-1]])
    for elements in sizes:
        wall, mm = statistics.median(seconds[elements]), statistics.median(shaped[elements])
        rows = decoder_shapes(elements)[0][0]
        rate = len(x) * args.iwae_samples * flops_per_eval / wall / 1e9
        print(f"chunks of {elements:,} elements ({rows} decoder rows): log_likelihood, "
              f"K={args.iwae_samples}, {len(x)} examples: {wall:.2f}s (median; {wall / base:.2f} x "
              f"{sizes[-1]:,}'s), {rate:.1f} GFLOP/s in decoder matmuls = {rate / peak:.0%} of the "
              f"2048^3 peak, {rate / mm:.0%} of the same shapes' mm ({mm:.1f} GFLOP/s); mean log p(x) "
              f"{lls[elements].mean():.2f}")
    estimators.CHUNK_ELEMENTS = {device.type: own, "cuda": own}
    if args.full:
        ll, wall = timed(data.test_x, own, args.iwae_samples)
        print(f"full test set ({len(data.test_x)} examples), K={args.iwae_samples}: {wall:.1f}s "
              f"({wall / 60:.1f} min), mean log p(x) {ll.mean():.2f}")


if __name__ == "__main__":
    main()
