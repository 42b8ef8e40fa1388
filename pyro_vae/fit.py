"""Fit a model and write a run directory: ``python -m pyro_vae.fit``.

    python -m pyro_vae.fit --guide amortized
    python -m pyro_vae.fit --dataset mnist --data-dir ../shared/data/mnist --latent-dim 50 --epochs 20
    python -m pyro_vae.fit --inference nuts --decoder-from RUN_DIR --subset 100

The inference method (``--inference``) is SVI with a variational family
(``--guide``) or NUTS; the drivers are ``pyro_vae.runs.fit_svi`` and
``pyro_vae.runs.fit_nuts``, and this module only parses the flags into a
``FitConfig``, calls ``pyro_vae.fit`` (or ``pyro_vae.resume``) and reports.
The same from Python: ``import pyro_vae as pv; pv.fit(pv.FitConfig(...))``.
"""

import os
import signal
import sys
from contextlib import contextmanager

from tqdm import tqdm

from pyro_vae import EvaluationSettings, FitConfig, MCMCSettings, UsageError, fit, resume
from pyro_vae.data import BINARIZE_MODES, DATASETS, DataError
from pyro_vae.nn import ACTIVATIONS
from pyro_vae.nn.flows import FLOW_LAYERS, FLOWS
from pyro_vae.objectives import ELBOS
from pyro_vae.objectives.score_function import BASELINES
from pyro_vae.plumbing.checkpoint import CheckpointError
from pyro_vae.plumbing.cli import (ArgumentParser, exit_with, int_list, nonnegative_int, positive_float, positive_int,
                                   report_out_of_memory)
from pyro_vae.plumbing.registry import guide_names, model_names
from pyro_vae.infer.svi.train import Interrupted, NonFiniteLoss
from pyro_vae.runs.config import COMPILE_MODES, INFERENCE, LR_SCHEDULES, NUTS_MODES, SAMPLERS, add_mixture_arguments


def add_flow_arguments(p):
    """--flow and --flow-layers, the transforms of ``--guide flow`` (``pyro_vae.nn.flows``)."""
    p.add_argument("--flow", choices=FLOWS,
                   help="--guide flow's transforms: iaf (conditional affine autoregressive) or spline (conditional "
                        "rational-quadratic spline autoregressive) (default iaf)")
    p.add_argument("--flow-layers", type=int, metavar="N",
                   help=f"--guide flow's number of transforms after the encoder's Gaussian (default {FLOW_LAYERS})")


def add_objective_arguments(p, d):
    """--elbo and the settings of its objectives (``pyro_vae.objectives``)."""
    p.add_argument("--elbo", choices=sorted(ELBOS), default=d.elbo,
                   help="trace: Trace_ELBO (Monte Carlo); meanfield: TraceMeanField_ELBO (analytic KL); enum: "
                        "TraceEnum_ELBO; score-function: the ELBO by the score function (--baseline); iwae: the "
                        "importance-weighted bound with --particles K per point; iwae-dreg: the same, the guide's "
                        "gradient doubly reparameterised; rws: reweighted wake-sleep; vimco: the same bound, the "
                        "guide's gradient by the score function (discrete z); wake-sleep: wake and sleep "
                        "phases; relaxed, relaxed-st: Gumbel-softmax and straight-through Gumbel-softmax for one-hot "
                        "latents (--temperature) (default %(default)s)")
    p.add_argument("--particles", type=positive_int, default=d.particles, metavar="K",
                   help="importance samples per data point of --elbo iwae, iwae-dreg, rws and vimco (default %(default)s)")
    p.add_argument("--baseline", choices=BASELINES, default=d.baseline,
                   help="--elbo score-function's baseline: none, average (a decaying average of the per-point "
                        "ELBO) or learned (that average plus an MLP of x) (default %(default)s)")
    p.add_argument("--temperature", type=positive_float, default=d.temperature, metavar="TAU",
                   help="--elbo relaxed and relaxed-st: the Gumbel-softmax temperature at step 0 (default %(default)s)")
    p.add_argument("--min-temperature", type=positive_float, default=d.min_temperature, metavar="TAU",
                   help="the temperature's floor: tau_t = max(min, tau_0 exp(-r t)) (default %(default)s)")
    p.add_argument("--anneal-rate", type=float, default=d.anneal_rate, metavar="R",
                   help="r of that schedule, per SVI step; 0 keeps tau_0 (default %(default)s)")


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.fit", description=__doc__.split("\n\n")[0])
    d = FitConfig()
    p.add_argument("--inference", choices=INFERENCE, default=d.inference,
                   help="svi: train a variational family (--guide) by SVI; nuts: sample the latents by NUTS; "
                        "em: closed-form EM (gmm), at most --epochs iterations (default %(default)s)")
    p.add_argument("--model", help=f"generative model: {', '.join(model_names())} (default: the dataset's)")
    p.add_argument("--guide", default=d.guide, help=f"variational family for --inference svi: "
                                                   f"{', '.join(guide_names())} (default %(default)s)")
    p.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS), metavar="NAME",
                   help=f"{', '.join(sorted(DATASETS))} (default %(default)s: bundled, no files needed)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's files")
    p.add_argument("--download", action="store_true", help="download MNIST / Fashion-MNIST through torchvision (needs a network)")
    p.add_argument("--num-train", type=positive_int, metavar="N", help="use the first N training examples (synthetic data: generate N)")
    p.add_argument("--num-test", type=positive_int, metavar="N", help="use the first N test examples (synthetic data: generate N)")
    p.add_argument("--data-dim", type=positive_int, metavar="D", help="dimension of synthetic data (linear_gaussian: default 10; gmm_synthetic: 2)")
    p.add_argument("--data-seed", type=int, metavar="S", help="seed of synthetic data (linear_gaussian, gmm_synthetic; default 0)")
    p.add_argument("--binarize", choices=BINARIZE_MODES,
                   help="dynamic: resample x ~ Bernoulli(intensity) per minibatch; static: once, fixed seed; "
                        "none: keep intensities (default: the dataset's)")
    p.add_argument("--latent-dim", type=positive_int, default=d.latent_dim, help="dimension of z (default %(default)s)")
    p.add_argument("--hidden-dims", type=int_list, default=d.hidden_dims, metavar="H[,H...]",
                   help="hidden layer widths from the data side; the decoder mirrors them (default 400)")
    add_mixture_arguments(p, d)
    p.add_argument("--epochs", type=positive_int, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="minibatch size (default %(default)s)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--local-lr", type=positive_float, default=d.local_lr,
                   help="learning rate of per-datapoint parameters and of their refinement steps (--guide "
                        "meanfield, semi_amortized) (default %(default)s)")
    p.add_argument("--local-steps", type=positive_int, metavar="K",
                   help="Adam steps on each minibatch's local posteriors, decoder fixed, before each SVI step "
                        "(meanfield), or on the encoder's q (semi_amortized) (default: the guide's)")
    add_flow_arguments(p)
    add_objective_arguments(p, d)
    p.add_argument("--bayesian-decoder", action="store_true",
                   help="N(0, I) priors on the decoder weights and a mean-field Gaussian q(theta) over them "
                        "(full VB); evaluation uses the decoder at E_q[theta], figures average 16 draws")
    p.add_argument("--clip-norm", type=positive_float, metavar="C",
                   help="clip the global gradient norm of the model and encoder parameters to C (default: no clipping)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its last checkpoint with its saved settings (--epochs N extends it)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=d.activation,
                   help="of the hidden layers of the encoder and decoder (default %(default)s)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant, or burda: --lr x 10^(-i/7) for 3^i epochs, i = 0..7, as Burda et al. (2015) "
                        "(default %(default)s)")
    p.add_argument("--compile", choices=COMPILE_MODES, default=d.compile,
                   help="record SVI's step (the samplers' steps) once and compile it with Inductor: on, off, or auto: "
                        "when the run is long enough to pay for it (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<dataset>-<guide>-<timestamp>)")
    add_mcmc_flags(p.add_argument_group("--inference nuts"), MCMCSettings())
    p.add_argument("--eval-iwae-samples", dest="evaluation.iwae_samples", type=positive_int,
                   default=EvaluationSettings.iwae_samples, metavar="K",
                   help="importance samples for the log-likelihood in summary.json (default %(default)s)")
    p.add_argument("--eval-max-examples", dest="evaluation.max_examples", type=positive_int,
                   default=EvaluationSettings.max_examples, metavar="N", help="test examples for that estimate (default %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that models or guides it registers can be named (repeatable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="print one line per epoch instead of progress bars")
    return p


def add_mcmc_flags(group, d):
    group.add_argument("--nuts-mode", dest="mcmc.mode", choices=NUTS_MODES, default=d.mode,
                       help="fixed-decoder: sample z of held-out points under --decoder-from's decoder; mcem: Monte "
                            "Carlo EM from scratch on --subset training points (default %(default)s)")
    group.add_argument("--decoder-from", dest="mcmc.decoder_from", metavar="RUN_DIR", help="the run whose decoder is held fixed")
    group.add_argument("--subset", dest="mcmc.subset", type=positive_int, default=d.subset, metavar="N",
                       help="points (default %(default)s)")
    group.add_argument("--chains", dest="mcmc.chains", type=positive_int, default=d.chains, metavar="N",
                       help="chains, all moved together in one batch (default %(default)s)")
    group.add_argument("--warmup", dest="mcmc.warmup", type=nonnegative_int, default=d.warmup, metavar="N",
                       help="warm-up steps per chain (default %(default)s)")
    group.add_argument("--samples", dest="mcmc.samples", type=positive_int, default=d.samples, metavar="N",
                       help="draws per chain (default %(default)s)")
    group.add_argument("--em-iterations", dest="mcmc.em_iterations", type=positive_int, default=d.em_iterations, metavar="N",
                       help="mcem rounds (default %(default)s)")
    group.add_argument("--m-steps", dest="mcmc.m_steps", type=positive_int, default=d.m_steps, metavar="N",
                       help="mcem: Adam steps (--lr) on the decoder per round (default %(default)s)")
    group.add_argument("--sampler", dest="mcmc.sampler", choices=SAMPLERS, default=d.sampler,
                       help="fixed-decoder: nuts, or chees (ChEES-HMC: every point its own --chains chains, one "
                            "adapted step size and trajectory length) (default %(default)s)")
    group.add_argument("--block-size", dest="mcmc.block_size", type=positive_int, default=d.block_size, metavar="B",
                       help="fixed-decoder nuts: points per joint trajectory, the blocks' trees in lockstep; 1: every "
                            "point its own tree (default: all --subset points)")


class StopRequest:
    """Set by SIGINT / SIGTERM; the training loop stops after the current step."""

    def __init__(self):
        self.signal = None

    def __call__(self):
        return self.signal is not None


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM ask the run to stop cleanly; a second one interrupts at once."""
    request = StopRequest()

    def handle(signum, frame):
        if request.signal is not None:
            raise KeyboardInterrupt
        request.signal = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


RESUME_FLAGS = {"resume", "epochs", "progress"}


def quiet_exit(prog, error, status=2):
    sys.exit(status)


def run(args, stop):
    """Start or resume the run the parsed ``args`` describe."""
    if args.resume:
        return resume(args.resume, args.epochs, args.progress, tqdm.write, stop)
    settings = {k: v for k, v in vars(args).items() if k not in ("progress", "resume")}
    settings["epochs"] = args.epochs or FitConfig.epochs
    return fit(FitConfig.from_flags(settings), args.progress, tqdm.write, stop)


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    report = exit_with if main_rank else quiet_exit  # under torchrun, rank 0 alone reports
    changed = {a.dest for a in p._actions if a.dest != "help" and getattr(args, a.dest) != a.default}
    if args.resume and changed - RESUME_FLAGS:
        flags = ", ".join(sorted(a.option_strings[0] for a in p._actions if a.dest in changed - RESUME_FLAGS))
        exit_with("fit", f"--resume continues a run with its saved settings; only --epochs may change, not {flags}")
    try:
        with stop_on_signals() as stop, report_out_of_memory("fit"):
            run(args, stop)
    except (UsageError, DataError, CheckpointError) as error:
        report("fit", error)
    except Interrupted as error:
        signum = stop.signal or signal.SIGTERM  # a rank stopped by another rank's signal
        if main_rank:
            print(f"fit: stopped by {signal.Signals(signum).name} during epoch {error.epoch}; {error.out}/checkpoint.pt "
                  f"holds epoch {error.epoch - 1}. Resume with: python -m pyro_vae.fit --resume {error.out}",
                  file=sys.stderr)
        sys.exit(128 + signum)
    except KeyboardInterrupt:  # a second signal: stop at once, the last epoch's checkpoint is still whole
        target = args.resume or args.out or "the run directory"
        if main_rank:
            print(f"fit: interrupted; {target}/checkpoint.pt holds the last finished epoch. Resume with: "
                  f"python -m pyro_vae.fit --resume {target}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except NonFiniteLoss as error:
        report("fit", f"non-finite {error.what} ({error.loss}) at epoch {error.epoch}, step {error.step}; "
                         f"{error.out}/checkpoint.pt still holds epoch {error.epoch - 1}. Likely causes: a learning "
                         f"rate too high (lower --lr, or --clip-norm 10), data outside the likelihood's support, "
                         f"or a scale collapsing to zero", status=1)


if __name__ == "__main__":
    main()
