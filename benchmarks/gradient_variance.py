"""Gradient variance and signal-to-noise ratio of the objectives' estimators
(issue #26), at an early and a late state of a Trace_ELBO fit on digits.

    python benchmarks/gradient_variance.py
    python benchmarks/gradient_variance.py --quick --out runs/gradient-variance-quick

Model ``bernoulli_mlp`` 64-200-L (L = ``--latent-dim``) with the
``amortized`` guide (encoder 64-200-2L), fitted by ``make_svi(..., "trace")``
and ``train_epoch`` (batch 128, Adam 1e-3). At epoch ``--early-epochs`` and
``--late-epochs`` the parameters are held fixed and each estimator's gradient
on one fixed, binarized minibatch of ``--rows`` training rows is drawn
``--draws`` times through the registry's objects
(``objectives.make_objective(name, particles, baseline)``, their
``loss_and_grads``; ``.grad`` read after each draw). Gradients are of the
loss divided by N (the per-example scale). Per parameter element: the variance
over draws and SNR = |mean| / std; the table gives the mean over the elements
of the encoder's (guide's) and of the decoder's (model's) parameters, the JSON
also the medians. Slopes: least squares of log mean-SNR on log K for ``iwae``
and ``iwae-dreg`` (K >= 5 and all K), beside Rainforth et al. (2018:
IWAE encoder SNR ~ K^-1/2, decoder ~ K^+1/2) and Tucker et al. (2019: DReG
encoder SNR does not fall with K).

Writes ``--out`` (default ``runs/gradient-variance-<timestamp>``; an existing
non-empty directory is refused): ``results.json``, ``snr_vs_k.png``,
``table.md``.
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

from pyro_vae.data import load_dataset
from pyro_vae.objectives import make_objective
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.infer.svi.train import make_svi, train_epoch

from machine import machine, machine_header

PROG = "benchmarks/gradient_variance.py"
PREDICTED = {("iwae", "encoder"): "-0.5 (Rainforth et al. 2018)", ("iwae", "decoder"): "+0.5 (Rainforth et al. 2018)",
             ("iwae-dreg", "encoder"): ">= 0, does not fall (Tucker et al. 2019)",
             ("iwae-dreg", "decoder"): "+0.5 (same model gradient as iwae)"}


def estimators(particles):
    """[(label, elbo name, K, baseline)] in table order."""
    rows = [("trace", "trace", 1, "none"), ("meanfield", "meanfield", 1, "none"),
            ("score-function (none)", "score-function", 1, "none"),
            ("score-function (average)", "score-function", 1, "average")]
    rows += [(f"iwae K={k}", "iwae", k, "none") for k in particles]
    rows += [(f"iwae-dreg K={k}", "iwae-dreg", k, "none") for k in particles]
    return rows


def flat_grads(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def gradient_draws(objective, model, guide, x, idx, num_data, draws, warmup=0):
    """(encoder draws, decoder draws): (draws, P) tensors of d(loss / N) / d params, one row per draw."""
    encoder, decoder = list(guide.parameters()), list(model.parameters())
    rows_e, rows_d = [], []
    for i in range(warmup + draws):
        for p in encoder + decoder:
            p.grad = None
        objective.loss_and_grads(model, guide, x, idx, num_data)
        if i >= warmup:
            rows_e.append(flat_grads(encoder) / num_data)
            rows_d.append(flat_grads(decoder) / num_data)
    for p in encoder + decoder:
        p.grad = None
    return torch.stack(rows_e).double(), torch.stack(rows_d).double()


def summarise(g):
    """Mean over elements of the variance over draws; mean and median over elements of the SNR
    (elements whose gradient is identically zero are left out)."""
    var = g.var(0)
    keep = var > 0
    snr = g.mean(0)[keep].abs() / var[keep].sqrt()
    return {"variance": var.mean().item(), "snr": snr.mean().item(), "snr_median": snr.median().item(),
            "elements": int(g.shape[1]), "zero_elements": int((~keep).sum())}


def measure(model, guide, x, idx, num_data, rows, draws, log):
    results = []
    for label, name, k, baseline in rows:
        objective = make_objective(name, particles=k, baseline=baseline)
        warmup = 20 if baseline == "average" else 0  # the decaying average settles first
        start = time.perf_counter()
        with pyro.validation_enabled(False):
            enc, dec = gradient_draws(objective, model, guide, x, idx, num_data, draws, warmup)
        seconds = time.perf_counter() - start
        results.append({"estimator": label, "elbo": name, "particles": k, "baseline": baseline,
                        "encoder": summarise(enc), "decoder": summarise(dec), "seconds": seconds})
        log(f"  {label:<26} enc SNR {results[-1]['encoder']['snr']:.3g}  dec SNR "
            f"{results[-1]['decoder']['snr']:.3g}  {seconds:.1f} s")
    return results


def slope(ks, snrs):
    """Least-squares slope of log SNR on log K."""
    lx = [math.log(k) for k in ks]
    ly = [math.log(s) for s in snrs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def slopes(results, particles):
    out = {}
    for name in ("iwae", "iwae-dreg"):
        by_k = {r["particles"]: r for r in results if r["elbo"] == name}
        for part in ("encoder", "decoder"):
            fits = {}
            for fit, ks in (("K>=5", [k for k in particles if k >= 5]), ("all K", list(particles))):
                if len(ks) >= 2:
                    fits[fit] = slope(ks, [by_k[k][part]["snr"] for k in ks])
            out[f"{name} {part}"] = fits
    return out


def markdown(states, particles):
    names = list(states)
    head = "| estimator | " + " | ".join(
        f"{s}: enc var | {s}: enc SNR | {s}: dec var | {s}: dec SNR | {s}: s" for s in names) + " |"
    lines = [head, "|---|" + "---:|" * (5 * len(names))]
    for i, row in enumerate(states[names[0]]["results"]):
        cells = [row["estimator"]]
        for s in names:
            r = states[s]["results"][i]
            cells += [f"{r['encoder']['variance']:.3g}", f"{r['encoder']['snr']:.3g}",
                      f"{r['decoder']['variance']:.3g}", f"{r['decoder']['snr']:.3g}", f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| slope of log SNR on log K | " + " | ".join(f"{s}: K>=5 | {s}: all K" for s in names)
              + " | prediction |", "|---|" + "---:|" * (2 * len(names)) + "---|"]
    for key, predicted in PREDICTED.items():
        label = f"{key[0]} {key[1]}"
        cells = [label]
        for s in names:
            fits = states[s]["slopes"][label]
            cells += [f"{fits[f]:+.2f}" if f in fits else "-" for f in ("K>=5", "all K")]
        lines.append("| " + " | ".join(cells + [predicted]) + " |")
    return "\n".join(lines)


def figure(states, particles, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, part in zip(axes, ("encoder", "decoder")):
        for s, style in zip(states, ("--", "-")):
            for name, color in (("iwae", "C0"), ("iwae-dreg", "C3")):
                by_k = {r["particles"]: r for r in states[s]["results"] if r["elbo"] == name}
                ax.plot(particles, [by_k[k][part]["snr"] for k in particles], style, marker="o", color=color,
                        label=f"{name}, {s}")
        ref = states[list(states)[-1]]
        k0 = particles[0]
        base = {r["particles"]: r for r in ref["results"] if r["elbo"] == "iwae"}[k0][part]["snr"]
        power = -0.5 if part == "encoder" else 0.5
        ax.plot(particles, [base * (k / k0) ** power for k in particles], ":", color="grey",
                label=f"K^{power:+.1f} (Rainforth et al.)")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("K (particles)"), ax.set_ylabel("mean SNR over elements"), ax.set_title(f"{part} gradient")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=100, help="gradient draws per estimator (default %(default)s)")
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 5, 50, 500],
                        help="K of iwae and iwae-dreg (default %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=8, help="default %(default)s")
    parser.add_argument("--hidden", type=int, default=200, help="hidden units, one layer (default %(default)s)")
    parser.add_argument("--rows", type=int, default=20,
                        help="rows of the fixed minibatch; K=500 costs 500 decoder passes per row (default %(default)s)")
    parser.add_argument("--early-epochs", type=int, default=1, help="default %(default)s")
    parser.add_argument("--late-epochs", type=int, default=30, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 draws, K 1 5 50, late state after 3 epochs")
    parser.add_argument("--out", default=None, help="default runs/gradient-variance-<timestamp>")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    if args.quick:
        args.draws, args.particles, args.late_epochs = 20, [k for k in args.particles if k <= 50], 3
    if args.draws < 2 or min(args.particles) < 1 or not 1 <= args.early_epochs < args.late_epochs:
        print(f"{PROG}: error: need --draws >= 2, --particles >= 1, 1 <= --early-epochs < --late-epochs",
              file=sys.stderr)
        sys.exit(2)
    out = Path(args.out or f"runs/gradient-variance-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"{PROG}: error: --out {out}: already exists and is not empty; choose a new directory",
              file=sys.stderr)
        sys.exit(2)
    particles = sorted(set(args.particles))
    total_start = time.perf_counter()

    pyro.set_rng_seed(args.seed)
    data = load_dataset("digits")
    num_data = data.num_train
    model = get_model("bernoulli_mlp")(data.data_dim, args.latent_dim, (args.hidden,))
    guide = get_guide("amortized")(model, num_data, (args.hidden,))
    svi = make_svi(model, guide, 1e-3, elbo="trace")
    idx = torch.arange(args.rows)
    x = torch.bernoulli(data.train_x[idx], generator=torch.Generator().manual_seed(args.seed))  # fixed binarization
    rows = estimators(particles)
    print(f"# gradient variance: digits, bernoulli_mlp 64-{args.hidden}-{args.latent_dim}, amortized; "
          f"{args.rows} rows, {args.draws} draws; torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
          f"{torch.get_num_threads()} threads, cpu")
    states = {}
    epoch = 0
    for state, epochs in (("early", args.early_epochs), ("late", args.late_epochs)):
        train_start = time.perf_counter()
        elbo = None
        while epoch < epochs:
            elbo, _ = train_epoch(svi, data, 128, progress=False)
            epoch += 1
        train_seconds = time.perf_counter() - train_start
        print(f"{state}: epoch {epoch}, train ELBO {elbo:.2f} nats/example ({train_seconds:.1f} s of training)")
        results = measure(model, guide, x, idx, num_data, rows, args.draws, print)
        states[state] = {"epoch": epoch, "train_elbo": elbo, "results": results,
                         "slopes": slopes(results, particles)}
    table = markdown(states, particles)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    figure(states, particles, out / "snr_vs_k.png")
    seconds = time.perf_counter() - total_start
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({
        "settings": {**vars(args), "particles": particles, "dataset": "digits", "model": "bernoulli_mlp",
                     "guide": "amortized", "num_train": num_data, "gradient_scale": "d(loss / N) / d params"},
        "machine": machine(),
        "states": states, "predictions": {f"{a} {b}": p for (a, b), p in PREDICTED.items()},
        "seconds": seconds}, indent=1))
    print(f"\n{seconds:.0f} s in all; wrote {out}/results.json, table.md, snr_vs_k.png")


if __name__ == "__main__":
    main()
