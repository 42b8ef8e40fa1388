"""Le et al. (2019, "Revisiting reweighted wake-sleep", the Gaussian mixture experiment): does RWS
learn better models and encoders as the number of particles K grows, where IWAE does not?

    python benchmarks/gmm_rws.py
    python benchmarks/gmm_rws.py --iterations 300 --particles 2 5 --seeds 1 --out runs/gmm-rws-quick

The true model: 20 components, c ~ Categorical(pi), pi_c proportional to c + 5, x | c ~ N(10 c, 5^2)
(c = 0..19). The learned model is ``gmm`` with those means and standard deviations held fixed and
the weights learned from uniform; the encoder is ``categorical_amortized``, q(c | x) =
Categorical(softmax(f(x))), f an MLP 1-16-20 with tanh (theirs). Each step draws a fresh batch of
``--batch-size`` (100) points from the true model and takes one Adam step (``--lr``) of
``make_svi(model, guide, lr, elbo, particles=K)`` for each objective: ``rws`` (reweighted
wake-sleep, the guide by the wake-phase update) and ``vimco`` (the IWAE bound, the guide by the
score function with VIMCO's leave-one-out baselines: the way IWAE trains a discrete encoder).

Errors (Le et al.'s definitions), every ``--every`` steps, on 1000 fixed held-out points from the
true model: model error = || pi_learned - pi_true ||_2; encoder error = the mean over the points of
KL(p(c | x) || q(c | x)), p(c | x) the learned model's exact posterior (what the encoder is trained
towards). Writes ``--out`` (default ``runs/gmm-rws-<timestamp>``): ``results.json``, ``table.md``
and ``errors.png`` (the errors against steps, one line per objective and K, means over seeds).
"""

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import pyro
import torch

from pyro_vae.nn import hidden_activation
from pyro_vae.guides.categorical import CategoricalAmortized
from pyro_vae.models.gmm import MIN_SCALE, GaussianMixture
from pyro_vae.infer.svi.train import make_svi

from machine import machine, machine_header

PROG = "benchmarks/gmm_rws.py"
COMPONENTS = 20


def true_model():
    model = GaussianMixture(1, num_components=COMPONENTS)
    with torch.no_grad():
        c = torch.arange(COMPONENTS, dtype=torch.float32)
        model.logits.copy_(torch.log(c + 5))
        model.locs.copy_(10 * c[:, None])
        model.log_scales.fill_(math.log(5.0 - MIN_SCALE))
    return model


def learner(truth):
    """The model to learn: the true means and scales, held fixed; uniform weights."""
    model = true_model()
    with torch.no_grad():
        model.logits.zero_()
    model.locs.requires_grad_(False)
    model.log_scales.requires_grad_(False)
    return model


def draw(model, n, generator):
    c = torch.multinomial(model.weights.detach(), n, replacement=True, generator=generator)
    return model.locs.detach()[c] + (model.log_scales.detach().exp()[c] + MIN_SCALE) * torch.randn(
        n, 1, generator=generator)


@torch.no_grad()
def errors(model, guide, truth, heldout):
    model_error = float(torch.linalg.vector_norm(model.weights - truth.weights))
    log_p = torch.log_softmax(model.joint_per_component(heldout), -1)
    log_q = torch.log_softmax(guide.encoder(heldout), -1)
    encoder_error = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return model_error, encoder_error


def run(elbo, particles, seed, args, truth, heldout):
    pyro.set_rng_seed(seed)
    model = learner(truth)
    with hidden_activation("tanh"):
        guide = CategoricalAmortized(model, args.batch_size, hidden_dims=(16,))
    svi = make_svi(model, guide, args.lr, elbo, particles=particles)
    generator = torch.Generator().manual_seed(1000 + seed)
    curve, start = [], time.perf_counter()
    for step in range(1, args.iterations + 1):
        svi.step(draw(truth, args.batch_size, generator))
        if step % args.every == 0 or step == args.iterations:
            curve.append((step, *errors(model, guide, truth, heldout)))
    return curve, time.perf_counter() - start


def table(results, particles):
    lines = ["| objective | K | model error, L2 of weights | encoder error, mean KL(p(c\\|x) \\|\\| q(c\\|x)) | "
             "seconds per run |", "|---|---|---|---|---|"]
    for key, row in results.items():
        lines.append(f"| {row['elbo']} | {row['particles']} | {row['model_error']:.4f} ± {row['model_error_se']:.4f} | "
                     f"{row['encoder_error']:.4f} ± {row['encoder_error_se']:.4f} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def mean_se(values):
    values = torch.tensor(values, dtype=torch.float64)
    se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), se


def figure(results, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for row in results.values():
        steps = [point[0] for point in row["curve"]]
        style = "-" if row["elbo"] == "rws" else "--"
        for ax, index in zip(axes, (1, 2)):
            ax.plot(steps, [point[index] for point in row["curve"]], style, label=f"{row['elbo']}, K={row['particles']}")
    for ax, label in zip(axes, ("model error: ||pi - pi_true||_2", "encoder error: mean KL(p(c|x) || q(c|x))")):
        ax.set(xlabel="step", ylabel=label, yscale="log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[2, 5, 10, 20], help="K (default 2 5 10 20)")
    parser.add_argument("--elbos", nargs="+", default=["rws", "vimco"], help="objectives (default rws vimco)")
    parser.add_argument("--iterations", type=int, default=2000, help="Adam steps per run (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--every", type=int, default=100, help="steps between error measurements (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=2, help="runs per objective and K (default %(default)s)")
    parser.add_argument("--out", default=None, help="default runs/gmm-rws-<timestamp>")
    args = parser.parse_args()
    out = Path(args.out or f"runs/gmm-rws-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"{PROG}: error: --out {out}: already exists and is not empty; choose a new directory", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    print(machine_header(), flush=True)
    truth = true_model()
    heldout = draw(truth, 1000, torch.Generator().manual_seed(12345))
    results = {}
    for elbo in args.elbos:
        for k in args.particles:
            runs = [run(elbo, k, seed, args, truth, heldout) for seed in range(args.seeds)]
            finals = [curve[-1] for curve, _ in runs]
            curve = [(point[0], *[sum(c[i][j] for c, _ in runs) / len(runs) for j in (1, 2)])
                     for i, point in enumerate(runs[0][0])]
            (model_error, model_se), (encoder_error, encoder_se) = (mean_se([f[1] for f in finals]),
                                                                    mean_se([f[2] for f in finals]))
            results[f"{elbo}-{k}"] = {"elbo": elbo, "particles": k, "model_error": model_error,
                                      "model_error_se": model_se, "encoder_error": encoder_error,
                                      "encoder_error_se": encoder_se, "seconds": sum(s for _, s in runs) / len(runs),
                                      "curve": curve}
            print(f"{elbo:6s} K={k:3d}: model error {model_error:.4f}, encoder error {encoder_error:.4f} "
                  f"({results[f'{elbo}-{k}']['seconds']:.1f}s per run)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    text = table(results, args.particles)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "machine": machine(), "results": results},
                                                 indent=1))
    figure(results, out / "errors.png")
    print(text)
    print(f"wrote {out}/table.md, results.json, errors.png")


if __name__ == "__main__":
    main()
