"""Time per epoch and test ELBO: pyro_vae vs a hand-written PyTorch VAE vs stock Pyro SVI.

    python benchmarks/fit_speed.py --data-dir ../shared/data/mnist

The same network (encoder 784-400-50, decoder 50-400-784, softplus), the
same data (MNIST, dynamic binarization, the same minibatches), Adam lr 1e-3,
batch 128, for ``--epochs`` epochs each. The three trainers take turns epoch
by epoch so that machine noise hits them alike; the figures are medians over
epochs and the ratio of medians against the hand-written loop.

- ``pytorch``: a plain loop, no Pyro: reparameterised z, Bernoulli
  log-likelihood from logits, Gaussian log-densities in closed form, one
  ``torch.optim.Adam``.
- ``pyro_vae``: ``pyro_vae.infer.svi.train.train_epoch`` (``pyro.infer.SVI`` with
  ``Trace_ELBO`` and ``pyro_vae.infer.svi.optim.Adam``) on the registered
  ``bernoulli_mlp`` model and ``amortized`` guide.
- ``stock_pyro``: the same model and guide under ``SVI`` with
  ``pyro.optim.Adam`` (one torch optimizer per parameter tensor).
- ``pytorch compiled``: the plain loop with its ELBO through ``torch.compile``
  (forward and backward compiled; the optimizer eager).
- ``pyro_vae compiled``: ``make_svi(..., compile=True)``, the SVI step recorded
  and compiled (``pyro_vae.infer.svi.compiled``); its first epoch includes compiling.
- with ``--objectives iwae,iwae-dreg,rws,wake-sleep,score-function``: the
  ``pyro_vae`` pair under each of those objectives too (``--particles K``
  importance samples per point for the first three).

Test ELBOs are single-sample estimates over the whole test set, each
trainer scored by its own code, in nats per example.
"""

import argparse
import math
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F

from pyro_vae.data import load_dataset
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.program.estimators import elbo_terms
from pyro_vae.objectives import ELBOS
from pyro_vae.infer.svi.train import NonFiniteLoss, make_svi, train_epoch

from machine import machine_header

LOG_2PI = math.log(2 * math.pi)


class HandWrittenVAE(nn.Module):
    def __init__(self, data_dim=784, hidden=400, latent=50):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Softplus(), nn.Linear(hidden, data_dim))

    def elbo(self, x):
        """One-sample ELBO per example: log p(x|z) + log p(z) - log q(z|x)."""
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)
        eps = torch.randn_like(loc)
        z = loc + log_scale.exp() * eps
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + LOG_2PI).sum(-1) - log_scale.sum(-1)
        return log_px + log_pz - log_qz


def pytorch_epoch(vae, optimizer, data, batch_size):
    start = time.perf_counter()
    for idx in data.batches(batch_size):
        x = data.train_batch(idx)
        loss = -vae.elbo(x).sum() * (data.num_train / len(idx))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def pytorch_test_elbo(vae, x):
    return sum(vae.elbo(chunk).sum().item() for chunk in x.split(1000)) / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objectives", default="", metavar="E[,E...]",
                        help="also time the amortized pair under these objectives (iwae, iwae-dreg, rws at "
                             "--particles K; wake-sleep; score-function with its average baseline)")
    parser.add_argument("--particles", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    data = load_dataset("mnist", args.data_dir, "dynamic", device)
    print(machine_header(), flush=True)
    print(f"MNIST {data.num_train} train / {len(data.test_x)} test on {device}, batch {args.batch_size}, "
          f"{args.epochs} epochs")

    torch.manual_seed(args.seed)
    vae = HandWrittenVAE().to(device)
    torch_optim = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def pyro_pair():
        model = get_model("bernoulli_mlp")(784, 50, (400,)).to(device)
        guide = get_guide("amortized")(model, data.num_train, (400,)).to(device)
        return model, guide

    # Two Pyro trainers share one process. pyro.module looks parameters up by
    # name, so each epoch starts from an empty param store, which then
    # registers that trainer's own module parameters again.
    torch.manual_seed(args.seed)
    compiled_vae = HandWrittenVAE().to(device)
    compiled_vae.elbo = torch.compile(compiled_vae.elbo)  # forward and (AOTAutograd) backward compiled
    compiled_optim = torch.optim.Adam(compiled_vae.parameters(), lr=1e-3)

    torch.manual_seed(args.seed)
    ours = pyro_pair()
    ours_svi = make_svi(*ours, lr=1e-3)
    torch.manual_seed(args.seed)
    ours_compiled = pyro_pair()
    ours_compiled_svi = make_svi(*ours_compiled, lr=1e-3, compile=True)
    torch.manual_seed(args.seed)
    stock = pyro_pair()
    stock_svi = SVI(*stock, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def pyro_epoch(svi):
        pyro.clear_param_store()
        return train_epoch(svi, data, args.batch_size, progress=False)[1]

    objective_pairs = {}
    for elbo in filter(None, args.objectives.split(",")):
        particles = args.particles if ELBOS[elbo].particles else 1
        torch.manual_seed(args.seed)
        pair = pyro_pair()
        label = f"pyro_vae {elbo}" + (f" K={particles}" if particles > 1 else "")
        objective_pairs[label] = (pair, make_svi(*pair, lr=1e-3, elbo=elbo, particles=particles,
                                                 baseline="average" if ELBOS[elbo].baseline else "none"))

    trainers = {
        "pytorch": lambda: pytorch_epoch(vae, torch_optim, data, args.batch_size),
        "pytorch compiled": lambda: pytorch_epoch(compiled_vae, compiled_optim, data, args.batch_size),
        "pyro_vae": lambda: pyro_epoch(ours_svi),
        "pyro_vae compiled": lambda: pyro_epoch(ours_compiled_svi),
        "stock_pyro": lambda: pyro_epoch(stock_svi),
        **{label: (lambda svi=svi: pyro_epoch(svi)) for label, (_, svi) in objective_pairs.items()},
    }
    times = {name: [] for name in trainers}
    diverged = {}  # a trainer whose parameters went non-finite: its epoch and error, its times so far kept
    for epoch in range(1, args.epochs + 1):
        for name, run_epoch in trainers.items():
            if name in diverged:
                continue
            try:
                times[name].append(run_epoch())
            except (RuntimeError, ValueError, NonFiniteLoss) as error:
                diverged[name] = f"diverged in epoch {epoch} ({str(error).splitlines()[0][:80]})"
        print(f"epoch {epoch}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items() if t))

    elbos = {}
    for name, (trainer_model, trainer_guide) in [("pyro_vae", ours), ("pyro_vae compiled", ours_compiled),
                                                 ("stock_pyro", stock),
                                                 *((label, pair) for label, (pair, _) in objective_pairs.items())]:
        if name in diverged:
            elbos[name] = float("nan")
            continue
        torch.manual_seed(args.seed + 1)
        pyro.clear_param_store()
        elbos[name] = elbo_terms(trainer_model, trainer_guide.posterior, data.test_x)[2].mean().item()
    for name, hand_written in [("pytorch", vae), ("pytorch compiled", compiled_vae)]:
        torch.manual_seed(args.seed + 1)
        elbos[name] = pytorch_test_elbo(hand_written, data.test_x)
    base = statistics.median(times["pytorch"][1:] or times["pytorch"])
    print(f"\nmedians over epochs 2..{args.epochs} (the first, which compiles, apart)\n")
    print("| trainer | test ELBO | 1st epoch s | s / epoch | ratio to pytorch |\n|---|---|---|---|---|")
    for name in trainers:
        if not times[name]:
            print(f"| {name} | {diverged[name]} | - | - | - |")
            continue
        median = statistics.median(times[name][1:] or times[name])
        note = f" ({diverged[name]})" if name in diverged else ""
        print(f"| {name} | {elbos[name]:.2f}{note} | {times[name][0]:.2f} | {median:.3f} | {median / base:.2f} |")
    print(f"\n|test ELBO pyro_vae - pytorch| = {abs(elbos['pyro_vae'] - elbos['pytorch']):.2f} nats; "
          f"|pyro_vae compiled - pyro_vae| = {abs(elbos['pyro_vae compiled'] - elbos['pyro_vae']):.3f} nats "
          f"(same seed)")
    first = times["pyro_vae compiled"][0] - statistics.median(times["pyro_vae compiled"][1:] or [0.0])
    saved = statistics.median(times["pyro_vae"][1:] or times["pyro_vae"]) - statistics.median(
        times["pyro_vae compiled"][1:] or times["pyro_vae compiled"])
    if saved > 0:
        print(f"pyro_vae compile: {first:.1f} s, recovered after {first / saved:.1f} epochs "
              f"({saved:.2f} s saved per epoch)")


if __name__ == "__main__":
    main()
