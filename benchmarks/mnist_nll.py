"""The literature's MNIST likelihood: Burda, Grosse & Salakhutdinov's (2015) one-layer VAE, through the CLI.

    python benchmarks/mnist_nll.py --data-dir ../shared/data/mnist [--epochs 1,4,13,40] \
        [--eval-examples 10000] [--iwae-samples 5000] [--device auto] [--out runs/mnist-nll]

Their recipe (section 5 and appendix C), as ``python -m pyro_vae.fit`` options:
one stochastic layer of 50 units (``--latent-dim 50``), encoder and decoder
with two deterministic layers of 200 tanh units (``--hidden-dims 200,200
--activation tanh``), dynamically binarized MNIST (60,000 training images,
``--binarize dynamic``), batch 20, Adam with lr 10^-3 x 10^(-i/7) for 3^i
epochs, i = 0..7 (``--lr-schedule burda``: 3,280 epochs in all). They report
test log p(x) = -86.76 nats for this VAE with K = 5000 (table 1); their Adam
had epsilon 1e-4 where torch's default (kept here) is 1e-8.

The run is trained to the first number of ``--epochs``, evaluated by
``python -m pyro_vae.evaluate --iwae-samples K`` on the first
``--eval-examples`` test images, resumed (``--resume``, the same schedule) to
the next number, evaluated again, and so on: one table of test log p(x)
against epochs and training seconds. The default epochs end the first four
stages of the schedule.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_header

RECIPE = ["--dataset", "mnist", "--binarize", "dynamic", "--latent-dim", "50", "--hidden-dims", "200,200",
          "--activation", "tanh", "--batch-size", "20", "--lr", "1e-3", "--lr-schedule", "burda"]
PUBLISHED = -86.76  # Burda et al. (2015), table 1: VAE, one stochastic layer, K = 5000


def command(module, *args):
    print("$ python -m", module, " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", module, *args], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", default="1,4,13,40", help="evaluate after these many epochs (ascending)")
    parser.add_argument("--eval-examples", type=int, default=10000, help="test images scored (10,000: all)")
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--out", default=f"runs/mnist-nll-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    stops = [int(e) for e in args.epochs.split(",")]
    rows = []
    for i, epochs in enumerate(stops):
        if i == 0:
            command("pyro_vae.fit", *RECIPE, "--data-dir", args.data_dir, "--epochs", str(epochs), "--device",
                    args.device, "--compile", args.compile, "--out", args.out, "--eval-max-examples", "100",
                    "--no-progress")
        else:
            command("pyro_vae.fit", "--resume", args.out, "--epochs", str(epochs), "--no-progress")
        command("pyro_vae.evaluate", args.out, "--iwae-samples", str(args.iwae_samples), "--max-examples",
                str(args.eval_examples), "--device", args.device, "--no-progress")
        metrics = [json.loads(line) for line in Path(args.out, "metrics.jsonl").read_text().splitlines()]
        result = json.loads(Path(args.out, "eval.json").read_text())
        train_seconds = sum(m["seconds"] for m in metrics)
        rows.append((epochs, train_seconds, result["log_likelihood"], result["log_likelihood_se"]))
        print(f"epoch {epochs}: test log p(x) {rows[-1][2]:.2f} ± {rows[-1][3]:.2f} "
              f"after {train_seconds:.0f} s of training", flush=True)
    print(f"\nBurda et al. (2015) recipe; test log p(x), K = {args.iwae_samples}, first {args.eval_examples} "
          f"test images; published: {PUBLISHED} after 3,280 epochs\n")
    print("| epochs | training seconds | test log p(x) |\n|---|---|---|")
    for epochs, seconds, ll, se in rows:
        print(f"| {epochs} | {seconds:.0f} | {ll:.2f} ± {se:.2f} |")


if __name__ == "__main__":
    main()
