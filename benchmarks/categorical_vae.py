"""Discrete latents on MNIST (issue #27, part B): the ``categorical_mlp`` VAE trained by each estimator
at equal steps, beside Jang, Gu & Poole (2016), Table 1.

    python benchmarks/categorical_vae.py --data-dir ../shared/data/mnist
    python benchmarks/categorical_vae.py --data-dir ../shared/data/mnist --latent-dim 2 --methods enum,relaxed,relaxed-st,score-function,rws

Model: M = ``--latent-dim`` one-hot variables of K = ``--categories`` classes (Jang et al.: 20 x 10),
uniform prior, Bernoulli decoder; encoder and decoder MLPs with ``--hidden-dims`` (theirs: 512-256),
batch 100, Adam ``--lr``. Each method (``--methods``, names of ``--elbo``) starts from the same seed and
takes the same SVI steps (``--epochs`` passes over the first ``--num-train`` training images,
dynamically binarized). The relaxed objectives anneal tau = max(``--min-temperature``, exp(-r t)), r =
``--anneal-rate``; score-function uses the ``average`` baseline; rws ``--particles`` K.

Per method, on the first ``--eval-examples`` test images: log p(x) (importance sampling with
``--iwae-samples`` draws from the encoder, and the exact sum where K^M <= 4096), the negative ELBO of the
discrete model (``--elbo-samples`` draws per point: for every method the same estimator, z one-hot),
the encoder's gradient variance (the mean over encoder weights of the variance of each method's own
encoder gradient, of the loss / N, over ``--grad-draws`` draws on one fixed minibatch of 100, at the
end of training) and seconds per epoch. Writes ``--out`` (default runs/categorical-vae-<timestamp>):
``results.json`` and ``table.md``.
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
from pyro_vae.program.estimators import elbo_terms, log_likelihood, mean_and_se
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.objectives.relaxed import Temperature
from pyro_vae.infer.svi.train import make_svi, train_epoch

from machine import machine, machine_header

PROG = "benchmarks/categorical_vae.py"
JANG_TABLE_1 = {"relaxed": 101.5, "relaxed-st": 107.8, "score-function": 110.6}  # negative ELBO, M = 20, K = 10
METHODS = ("relaxed", "relaxed-st", "score-function", "rws")


def parse(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/mnist", help="MNIST's IDX files (default %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="--elbo names, comma-separated (default %(default)s)")
    p.add_argument("--latent-dim", type=int, default=20, help="M, one-hot variables (default %(default)s)")
    p.add_argument("--categories", type=int, default=10, help="K, classes of each (default %(default)s)")
    p.add_argument("--hidden-dims", default="512,256", help="from the data side (default %(default)s)")
    p.add_argument("--num-train", type=int, default=60000, help="training images used (default %(default)s)")
    p.add_argument("--epochs", type=int, default=1, help="passes over them, every method (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam (default %(default)s)")
    p.add_argument("--min-temperature", type=float, default=0.5, help="tau floor (default %(default)s)")
    p.add_argument("--anneal-rate", type=float, default=1e-4, help="r per step (default %(default)s)")
    p.add_argument("--particles", type=int, default=5, help="rws's K (default %(default)s)")
    p.add_argument("--eval-examples", type=int, default=1000, help="test images scored (default %(default)s)")
    p.add_argument("--iwae-samples", type=int, default=1000, help="draws per image for log p(x) (default %(default)s)")
    p.add_argument("--elbo-samples", type=int, default=10, help="draws per image for the ELBO (default %(default)s)")
    p.add_argument("--grad-draws", type=int, default=50, help="gradient draws (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default %(default)s")
    p.add_argument("--out", default=None, help="default runs/categorical-vae-<timestamp>")
    return p.parse_args(argv)


def encoder_gradient_variance(svi, model, guide, x, draws):
    """Mean over the encoder's weights of the variance of their gradient (of loss / N) over ``draws``."""
    params = list(guide.parameters())
    rows = []
    idx = torch.arange(len(x))
    for _ in range(draws):
        for p in (*model.parameters(), *params):
            p.grad = None
        svi.loss_and_grads(svi.model, svi.guide, x, idx, len(x))
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    objective = getattr(svi.loss, "__self__", None)  # SVI keeps the objective's bound methods
    if hasattr(objective, "step"):
        objective.step -= draws  # the draws are not training steps
    return (torch.stack(rows) / len(x)).var(0).mean().item()


def run_method(method, args, data, hidden):
    """Train one method from the shared seed; score it."""
    pyro.set_rng_seed(args.seed)
    model = get_model("categorical_mlp")(data.data_dim, args.latent_dim, hidden, categories=args.categories)
    guide = get_guide("categorical_mlp")(model, data.num_train, hidden)
    svi = make_svi(model, guide, args.lr, method, particles=args.particles if method == "rws" else 1,
                   baseline="average" if method == "score-function" else "none",
                   temperature=Temperature(1.0, args.min_temperature, args.anneal_rate))
    seconds = []
    with pyro.validation_enabled(False):
        for epoch in range(args.epochs):
            train_elbo, elapsed = train_epoch(svi, data, 100, progress=False)
            seconds.append(elapsed)
            print(f"{method}: epoch {epoch + 1}, train ELBO {train_elbo:.2f}, {elapsed:.1f}s", flush=True)
        model.eval()
        guide.eval()
        x = data.test_x[: args.eval_examples]
        proposal = lambda xb: guide.posterior(xb)  # noqa: E731
        with torch.no_grad():
            ll = log_likelihood(model, proposal, x, args.iwae_samples)
            elbo = elbo_terms(model, proposal, x, samples=args.elbo_samples)[2]
            exact = model.log_marginal(x)
        fixed_batch = data.train_batch(torch.arange(100))
        variance = encoder_gradient_variance(svi, model, guide, fixed_batch, args.grad_draws)
    row = {"method": method, "steps": len(seconds) * math.ceil(data.num_train / 100),
           "seconds_per_epoch": sum(seconds) / len(seconds), "encoder_gradient_variance": variance,
           "final_temperature": getattr(getattr(svi.loss, "__self__", None), "temperature", None)}
    row["log_likelihood"], row["log_likelihood_se"] = mean_and_se(ll)
    row["negative_elbo"], row["negative_elbo_se"] = mean_and_se(-elbo)
    if exact is not None:
        row["exact_log_likelihood"], row["exact_log_likelihood_se"] = mean_and_se(exact)
    return row


def markdown(rows, args):
    exact = any("exact_log_likelihood" in r for r in rows)
    lines = [f"M = {args.latent_dim} variables x K = {args.categories} classes, hidden {args.hidden_dims}, "
             f"{rows[0]['steps']} steps of batch 100 ({args.epochs} epoch(s) of {args.num_train} images), "
             f"{args.eval_examples} test images; log p(x): K = {args.iwae_samples} draws from the encoder"
             + (", and exact by enumeration" if exact else "") + ". Nats per image, ± one standard error.", "",
             "| method | log p(x) | " + ("exact log p(x) | " if exact else "") + "negative ELBO | Jang et al. "
             "(negative ELBO) | encoder gradient variance | s / epoch |",
             "|---|---|" + ("---|" if exact else "") + "---|---|---|---|"]
    for r in rows:
        cells = [r["method"], f"{r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f}"]
        if exact:
            cells.append(f"{r['exact_log_likelihood']:.2f} ± {r['exact_log_likelihood_se']:.2f}"
                         if "exact_log_likelihood" in r else "-")
        jang = JANG_TABLE_1.get(r["method"]) if (args.latent_dim, args.categories) == (20, 10) else None
        cells += [f"{r['negative_elbo']:.2f} ± {r['negative_elbo_se']:.2f}", f"{jang}" if jang else "-",
                  f"{r['encoder_gradient_variance']:.3g}", f"{r['seconds_per_epoch']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ranked = [r["method"] for r in sorted(rows, key=lambda r: r["negative_elbo"]) if r["method"] in JANG_TABLE_1]
    expected = [m for m in sorted(JANG_TABLE_1, key=JANG_TABLE_1.get) if m in ranked]
    lines += ["", f"Ranking by negative ELBO here: {' < '.join(ranked)}; Jang et al.'s: {' < '.join(expected)} "
                  f"({'holds' if ranked == expected else 'does not hold'} at equal steps)."]
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    print(machine_header(), flush=True)
    out = Path(args.out or f"runs/categorical-vae-{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(f"{PROG}: error: {out} exists and is not empty")
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    data = load_dataset("mnist", args.data_dir, "dynamic", torch.device("cpu"), num_train=args.num_train)
    start = time.perf_counter()
    rows = [run_method(method, args, data, hidden) for method in args.methods.split(",")]
    table = markdown(rows, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "machine": machine(), "rows": rows,
                                                  "seconds": time.perf_counter() - start}, indent=2))
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
