"""Classical VB that learns: test log p(x) on MNIST at a fixed wall-time budget
against the local refinement steps K of ``--guide meanfield``.

    python benchmarks/local_steps_curve.py --data-dir ../shared/data/mnist [--budget 60 | --epochs 3] \
        [--steps 5,20,50] [--lrs 0.1,0.3]

For each (K, local learning rate): a 784-400-50 model (softplus, batch 128,
Adam 1e-3, dynamic binarization, seed 0) trained with the meanfield guide
through the one SVI loop (``svi.setup`` + ``train.train_epoch``) for whole
epochs until ``--budget`` seconds of training have passed (the epoch that
crosses the budget is finished and counted); then the importance-weighted
test log p(x) (K_is = ``--iwae-samples``) on the first ``--eval-examples``
test points, the proposal a per-point Gaussian fitted with the decoder fixed
(what ``evaluate`` does for a meanfield run). An amortized row with the same
budget is the reference. One table, side by side.
"""

import argparse
import time

import pyro

from pyro_vae.runs.config import FitConfig
from pyro_vae.infer.svi.distributed import Cluster
from pyro_vae.program.estimators import log_likelihood, mean_and_se
from pyro_vae.infer.local_fit import fit_local_posterior
from pyro_vae.runs.fit_svi import setup
from pyro_vae.infer.svi.train import train_epoch

from machine import machine_header


def train_for(config, budget, max_epochs=None):
    pyro.set_rng_seed(config.seed)
    session = setup(config, Cluster(device_name="cpu"))
    seconds, epochs = 0.0, 0
    while (seconds < budget) if max_epochs is None else (epochs < max_epochs):
        session.model.train()
        session.guide.train()
        seconds += train_epoch(session.svi, session.data, config.batch_size, progress=False)[1]
        epochs += 1
    session.model.eval()
    session.guide.eval()
    return session, seconds, epochs


def test_log_likelihood(session, examples, iwae_samples):
    model, guide = session.model, session.guide
    x = session.data.test_x[:examples]
    pyro.set_rng_seed(1)
    if getattr(guide, "amortized", False):
        proposal = guide.posterior
    else:
        proposal = lambda xb: fit_local_posterior(model, xb)[0]  # noqa: E731
    return mean_and_se(log_likelihood(model, proposal, x, iwae_samples))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per row (default %(default)s)")
    p.add_argument("--epochs", type=int, help="train exactly this many epochs instead of for --budget seconds")
    p.add_argument("--steps", default="5,20,50", help="local steps K to try (each at least 1)")
    p.add_argument("--lrs", default="0.1,0.3", help="local learning rates to try")
    p.add_argument("--eval-examples", type=int, default=500)
    p.add_argument("--iwae-samples", type=int, default=500)
    p.add_argument("--out", default="runs/local-steps-curve")
    args = p.parse_args()
    print(machine_header(), flush=True)
    base = dict(dataset="mnist", data_dir=args.data_dir, latent_dim=50, hidden_dims=(400,), batch_size=128, seed=0,
                device="cpu")
    rows = []
    runs = [("amortized", None, None)] + [("meanfield", int(k), float(lr)) for k in args.steps.split(",")
                                          for lr in args.lrs.split(",")]
    for guide, steps, lr in runs:
        name = guide if steps is None else f"meanfield K={steps} lr={lr}"
        config = FitConfig(guide=guide, out=f"{args.out}/{name.replace(' ', '_')}-{time.time():.0f}", **base)
        if steps is not None:
            config.local_lr, config.local_steps = lr, steps
        session, seconds, epochs = train_for(config, args.budget, args.epochs)
        ll, se = test_log_likelihood(session, args.eval_examples, args.iwae_samples)
        rows.append((name, epochs, seconds / epochs, ll, se))
        print(f"{name:28} {epochs:3d} epochs {seconds / epochs:7.2f} s/epoch  test log p(x) {ll:9.2f} ± {se:.2f}",
              flush=True)
    length = f"{args.epochs} epochs" if args.epochs else f"{args.budget:.0f} s training budget"
    print(f"\nMNIST 784-400-50, {length} per row; test log p(x) on "
          f"{args.eval_examples} points, K = {args.iwae_samples}\n")
    print("| method | epochs | s / epoch | test log p(x) |\n|---|---|---|---|")
    for name, epochs, per_epoch, ll, se in rows:
        print(f"| {name} | {epochs} | {per_epoch:.2f} | {ll:.2f} ± {se:.2f} |")


if __name__ == "__main__":
    main()
