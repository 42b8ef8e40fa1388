"""The gap decomposition of Cremer, Li & Duvenaud (2018) on MNIST, with AIS
for log p(x) and the BDMC width that certifies it.

    python benchmarks/gaps_mnist.py --data-dir ../shared/data/mnist [--epochs 10] [--points 100]

The architecture follows the paper's description (as summarised in the
project's issue): latent 50, encoder 784-200-200-(50 + 50) and decoder
50-200-200-784, ELU activations, Bernoulli likelihood, dynamically
binarized MNIST, Adam 1e-3, batch 100: the registered ``bernoulli_mlp``
model and ``amortized`` guide with ``--activation elu --hidden-dims
200,200``, trained by ``pyro_vae.fit``; then, for the first
``--points`` test points under the trained decoder, ``compare_posteriors``
infers p(z | x) with the encoder, the encoder plus refinement steps, a
per-point mean-field q* and NUTS, and log p(x) by AIS from the NUTS
proposal; BDMC on as many points simulated from the model gives the width.
Printed: the decomposition with standard errors over points, the AIS and
NUTS settings and the seconds each part took.

    python benchmarks/gaps_mnist.py --data-dir ../shared/data/mnist --families ffg,full_rank,flow

instead trains one model per variational family (``amortized``, ``full_rank``, ``flow`` with
``--flow`` and ``--flow-layers``) at the same settings and decomposes each one's gaps with its own
per-point q* (``pyro_vae.studies.family_gaps``), log p(x) by AIS from the FFG q*: ``families.md``,
``families.json`` and the stacked bars ``gaps.png`` in ``--out``.
"""

import argparse
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.infer.ais import AISOptions, bdmc
from pyro_vae.studies.posterior_comparison import compare_posteriors, format_report
from pyro_vae.runs.config import EvaluationSettings, FitConfig
from pyro_vae import fit
from pyro_vae.studies.family_gaps import compare_families, parse_families

from machine import machine_header


def families(args):
    """``--families``: each family trained at Cremer et al.'s settings, its gaps decomposed."""
    base = FitConfig(dataset="mnist", data_dir=args.data_dir, model="bernoulli_mlp", latent_dim=50,
                     hidden_dims=(200, 200), activation="elu", epochs=args.epochs, batch_size=100, lr=1e-3,
                     flow=args.flow, flow_layers=args.flow_layers, evaluation=EvaluationSettings(args.iwae_samples, args.points))
    start = time.perf_counter()
    rows = compare_families(base, parse_families(args.families), Path(args.out), subset=args.points, seed=0,
                            log=lambda line: print(line, flush=True), elbo_samples=200, iwae_samples=args.iwae_samples,
                            ais_steps=args.ais_steps, ais_chains=args.ais_chains,
                            reuse=Path(args.reuse) if args.reuse else None)
    for r in rows:
        print(f"{r['family']}: q* {r['q_star_steps']} steps, {r['q_star_seconds']:.0f} s")
    print(f"all families: {time.perf_counter() - start:.0f} s; figure {args.out}/gaps.png")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--points", type=int, default=100, help="test points for the decomposition")
    p.add_argument("--nuts-chains", type=int, default=2)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--ais-steps", type=int, default=500)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--iwae-samples", type=int, default=1000)
    p.add_argument("--out", default=f"runs/gaps-mnist-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--families", help="ffg,full_rank,flow: a model per family, each one's gaps side by side "
                                      "(log p(x) by AIS from the FFG q*; no NUTS, no BDMC)")
    p.add_argument("--reuse", help="with --families: load DIR/<family>-run of an earlier --families run instead of training")
    p.add_argument("--flow", default="iaf", help="the flow family's transforms: iaf or spline")
    p.add_argument("--flow-layers", type=int, default=2, help="the flow family's number of transforms")
    args = p.parse_args()
    print(machine_header(), flush=True)
    if args.families:
        return families(args)
    start = time.perf_counter()
    run = fit(FitConfig(dataset="mnist", data_dir=args.data_dir, model="bernoulli_mlp", guide="amortized",
                        latent_dim=50, hidden_dims=(200, 200), activation="elu", epochs=args.epochs,
                        batch_size=100, lr=1e-3, out=f"{args.out}/vae", evaluation=EvaluationSettings(args.iwae_samples, args.points)),
              progress=False)
    train_seconds = time.perf_counter() - start
    x = run.data.test_x[: args.points]
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    results, *_ = compare_posteriors(run.model, run.guide, x, iwae_samples=args.iwae_samples, elbo_samples=200,
                                     chains=args.nuts_chains, warmup=args.nuts_warmup, samples=args.nuts_samples,
                                     ais_steps=args.ais_steps, ais_chains=args.ais_chains)
    compare_seconds = time.perf_counter() - start
    with torch.no_grad():
        certificate = bdmc(run.model, args.points, AISOptions(steps=args.ais_steps, chains=args.ais_chains))
    print(format_report(results, "mnist", run.out))
    print(f"trained {args.epochs} epochs in {train_seconds:.0f} s; comparison {compare_seconds:.0f} s")
    print(f"BDMC on {args.points} simulated points, {args.ais_chains} chains x {args.ais_steps} steps from the prior: "
          f"lower {certificate.lower:.3f}, upper {certificate.upper:.3f}, width {certificate.width:.3f} "
          f"({certificate.forward.seconds + certificate.reverse.seconds:.0f} s)")
    print(f"IWAE K={args.iwae_samples} (encoder proposal) {results['amortized']['log_likelihood']:.3f} ± "
          f"{results['amortized']['log_likelihood_se']:.3f}; AIS {results['ais']['log_likelihood']:.3f} ± "
          f"{results['ais']['log_likelihood_se']:.3f}")


if __name__ == "__main__":
    main()
