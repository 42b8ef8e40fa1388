"""Everything the project measures on a GPU, in one run and one table.

    python benchmarks/gpu_suite.py --data-dir ../shared/data/mnist [--epochs 10] [--skip-tests]

For a session lent a GPU (see the device tool): it runs

1. the tests that need CUDA (``tests/test_cuda.py``; they skip without one);
2. ``benchmarks/fit_speed.py --device cuda`` (hand-written and pyro_vae
   SVI, eager and compiled, seconds per MNIST epoch at batch 128);
3. a 784-400-50 amortized VAE trained ``--epochs`` epochs by
   ``python -m pyro_vae.fit --device cuda`` (compiled step), then
   ``python -m pyro_vae.evaluate`` with K = 5000 on the full MNIST test set;
4. NUTS on 1,000 test points of that model in one batch (4 chains,
   200 + 200, compiled), and AIS (500 steps, 16 chains) on the same points;
5. ``benchmarks/nuts_many_points.py --device cuda``: joint NUTS, NUTS in
   blocks, per point (with a depth cap) and ChEES-HMC on 1,000 points, and
   the per-point methods on 10,000;

and prints one table with the device's name. Paste it into the README.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def shell(*args):
    """Run a command, echo its output, return (seconds, output)."""
    print("$", " ".join(args), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:], flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}")
    return time.perf_counter() - start, proc.stdout


def posterior_checks(run_dir, points):
    """NUTS and AIS on ``points`` test images under the run's decoder, on the GPU."""
    from pyro_vae.infer import ais
    from pyro_vae.building_blocks import frozen
    from pyro_vae.mcmc import diagnose, inference_data, sample_latents
    from pyro_vae.rundir import load_run

    run = load_run(run_dir, torch.device("cuda"))
    x = run.data.test_x[:points]
    init = run.guide.posterior(x)
    draws, stats, nuts_seconds = sample_latents(run.model, x, chains=4, warmup=200, samples=200, init=init,
                                                compile=True)
    _, figures, _ = diagnose(inference_data(draws, stats, x), chains=4)
    with frozen(run.model), torch.no_grad():
        result = ais.ais_log_likelihood(run.model, x, seed=0)
    return [
        (f"NUTS, {points} points x 4 chains, 200 + 200, compiled", f"{nuts_seconds:.1f} s",
         f"max R-hat {figures['max_r_hat']:.3f}, min bulk ESS {figures['min_ess_bulk']:.0f}"),
        (f"AIS, {points} points, {result.steps} steps x {result.chains} chains", f"{result.seconds:.1f} s",
         f"log p(x) {result.mean:.2f} ± {result.se:.2f}"),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", default="runs/gpu-suite")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device")
    device = torch.cuda.get_device_name()
    rows = []
    if not args.skip_tests:
        seconds, out = shell(sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py")
        rows.append(("tests/test_cuda.py", f"{seconds:.0f} s", out.strip().splitlines()[-1]))
    seconds, out = shell(sys.executable, "benchmarks/fit_speed.py", "--data-dir", args.data_dir, "--device", "cuda")
    rows += [(f"fit_speed: {line.split('|')[1].strip()}", f"{line.split('|')[4].strip()} s/epoch",
              f"{line.split('|')[5].strip()}x pytorch eager, test ELBO {line.split('|')[2].strip()}")
             for line in out.splitlines() if line.startswith("| ") and not line.startswith("| trainer")]
    seconds, _ = shell(sys.executable, "-m", "pyro_vae.fit", "--dataset", "mnist", "--data-dir", args.data_dir,
                       "--latent-dim", "50", "--hidden-dims", "400", "--epochs", str(args.epochs), "--device", "cuda",
                       "--compile", "on", "--out", args.out, "--no-progress")
    rows.append((f"fit 784-400-50, {args.epochs} epochs, compiled", f"{seconds:.0f} s", "whole command"))
    seconds, _ = shell(sys.executable, "-m", "pyro_vae.evaluate", args.out, "--iwae-samples", "5000", "--device",
                       "cuda", "--no-progress")
    result = json.loads(Path(ROOT, args.out, "eval.json").read_text())
    rows.append(("IWAE K = 5000, full MNIST test set", f"{seconds:.0f} s",
                 f"log p(x) {result['log_likelihood']:.2f} ± {result['log_likelihood_se']:.2f}"))
    rows += posterior_checks(Path(ROOT, args.out), args.points)
    for points, methods in [(1000, "joint,blocks,per-point,per-point-capped,chees"),
                            (10000, "per-point-capped,chees")]:
        seconds, out = shell(sys.executable, "benchmarks/nuts_many_points.py", "--data-dir", args.data_dir,
                             "--device", "cuda", "--points", str(points), "--methods", methods)
        rows += [(f"{points} points: {line.split('|')[1].strip()}", f"{line.split('|')[3].strip()} s",
                  f"min ESS/s {line.split('|')[7].strip()}, max R-hat {line.split('|')[6].strip()}")
                 for line in out.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    print(f"\n{device}, torch {torch.__version__}\n\n| check | time | result |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
