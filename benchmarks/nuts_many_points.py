"""Many points, one batch: joint NUTS, NUTS in blocks, per-point NUTS (with and without a depth cap) and
ChEES-HMC on the posteriors p(z_i | x_i) of N test images under a trained MNIST decoder (latent 50).

    python benchmarks/nuts_many_points.py --data-dir ../shared/data/mnist [--points 20] [--device cpu]

The decoder: the registered 784-400-50 ``bernoulli_mlp`` with the ``amortized`` guide, trained ``--epochs``
epochs by ``pyro_vae.fit``. Every method runs ``--chains`` chains per point started from the encoder's q(z|x),
``--warmup`` + ``--samples`` iterations, compiled, through ``pyro_vae.infer.mcmc.sampling.sample_latents``:

- ``nuts``: one NUTS trajectory over the joint latents of all N points (N x 50 dimensions) per chain;
- ``nuts, blocks of B``: ``block_size=B``: N / B joint trajectories per chain, their trees in lockstep;
- ``nuts, per point``: ``block_size=1``: every point its own tree, step size and metric, in lockstep;
- ``nuts, per point, depth <= D``: the same with the trees capped at depth D;
- ``chees``: ChEES-HMC, every point its own chains, one adapted step size and trajectory length.

Each method runs twice: a first call of 10 + 10 iterations records and compiles its steps (its seconds are
shown), the second reuses them and is the one measured: seconds, leapfrog steps per iteration (the batch's, what
the hardware computes), min bulk ESS and max R-hat over the N x 50 coordinates (ArviZ), min ESS per second, and
the largest gap between the method's posterior means and the first method's, in that one's posterior standard
deviations.
"""

import argparse
import tempfile

import arviz as az
import numpy as np
import torch

from pyro_vae.runs.config import EvaluationSettings, FitConfig
from pyro_vae import fit
from pyro_vae.infer.mcmc.sampling import sample_latents

from machine import machine_header


def methods(points):
    """(key, table name, sample_latents options) of every method this problem size allows."""
    rows = [("joint", "nuts, joint", {})]
    rows += [("blocks", f"nuts, blocks of {b}", {"block_size": b}) for b in (10,) if 1 < b < points and points % b == 0]
    rows += [("per-point", "nuts, per point", {"block_size": 1}),
             ("per-point-capped", "nuts, per point, depth <= 4", {"block_size": 1, "max_tree_depth": 4}),
             ("chees", "chees, per point", {"sampler": "chees"})]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default="joint,blocks,per-point,per-point-capped,chees",
                   help="comma-separated subset of joint, blocks, per-point, per-point-capped, chees")
    args = p.parse_args()
    print(machine_header(), flush=True)
    with tempfile.TemporaryDirectory() as out:
        run = fit(FitConfig(dataset="mnist", data_dir=args.data_dir, latent_dim=50, hidden_dims=(400,),
                            epochs=args.epochs, device=args.device, out=out, evaluation=EvaluationSettings(10, 10)),
                  progress=False, log=lambda *a: None)
    x = run.data.test_x[: args.points]
    init = run.guide.posterior(x)
    device = torch.cuda.get_device_name() if x.is_cuda else "CPU"
    print(f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.points} MNIST test points, "
          f"latent 50, {args.chains} chains, {args.warmup} + {args.samples}\n", flush=True)
    print("| method | 1st call s (compiles, 10 + 10) | s | leapfrog steps / it | min bulk ESS | max R-hat | min ESS/s "
          "| max mean gap (sd) |\n|---|---|---|---|---|---|---|---|", flush=True)
    reference = None
    for key, name, options in methods(args.points):
        if key not in args.methods.split(","):
            continue
        common = dict(chains=args.chains, init=init, compile=True, **options)
        first = sample_latents(run.model, x, warmup=10, samples=10, seed=0, **common)[2]
        draws, stats, seconds = sample_latents(run.model, x, warmup=args.warmup, samples=args.samples, seed=1,
                                               **common)
        draws = draws.cpu().numpy()
        summary = az.summary(az.from_dict(posterior={"z": draws}), kind="diagnostics", round_to="none")
        ess, rhat = float(summary["ess_bulk"].min()), float(summary["r_hat"].max())
        mean, sd = draws.mean((0, 1)), draws.std((0, 1))
        if reference is None:
            reference = (mean, sd)
        gap = float(np.max(np.abs(mean - reference[0]) / reference[1]))
        steps = float(stats["n_steps"].float().mean())
        print(f"| {name} | {first:.1f} | {seconds:.1f} | {steps:.1f} | {ess:.0f} | {rhat:.3f} | {ess / seconds:.2f} "
              f"| {gap:.2f} |", flush=True)


if __name__ == "__main__":
    main()
