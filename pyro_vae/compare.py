"""Compare inference methods on one model: ``python -m pyro_vae.compare``.

    python -m pyro_vae.compare [--dataset digits] [--run RUN_DIR] [--subset 100] [--out DIR]
    python -m pyro_vae.compare --families ffg,full_rank,flow [--dataset digits]
    python -m pyro_vae.compare --fit-from-scratch [--dataset digits] [--passes 20]

Trains the model with the amortized guide (or takes ``--run RUN_DIR``), infers p(z | x) for
``--subset`` held-out points with the encoder, the encoder refined (semi-amortized), a per-point
mean-field q* and NUTS, scores them and decomposes the gaps of Cremer, Li & Duvenaud (2018); prints
``report.md`` and writes it, ``report.json``, figures and the posteriors as ArviZ InferenceData.
``--families`` decomposes the gaps per variational family instead, and ``--fit-from-scratch``
learns the decoder with each method and compares held-out log p(x) against wall time. What each
does: ``pyro_vae.studies.comparison``. This module parses the flags into a ``CompareSettings``,
calls ``pyro_vae.compare`` and reports; from Python: ``pv.compare(run, pv.CompareSettings(...))``.
"""

import argparse

from pyro_vae import CompareSettings, UsageError, compare
from pyro_vae.data import DATASETS, DataError
from pyro_vae.plumbing.checkpoint import CheckpointError
from pyro_vae.plumbing.cli import (ArgumentParser, exit_with, int_list, names_in, positive_float, positive_int,
                                   report_out_of_memory)
from pyro_vae.studies.calibration import SBC_FLAGS, add_calibration_arguments, settings_from_args
from pyro_vae.runs.config import add_mixture_arguments
from pyro_vae.nn.flows import FLOWS
from pyro_vae.studies.scratch import OBJECTIVES

DEFAULTS = CompareSettings()


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", metavar="RUN_DIR", help="an amortized run whose decoder and encoder to use (default: train one)")
    p.add_argument("--dataset", choices=sorted(DATASETS), metavar="NAME", help="dataset (default digits, or --run's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's files")
    p.add_argument("--model", help="generative model when training (default: the dataset's)")
    p.add_argument("--latent-dim", type=positive_int,
                   help="latent dimension when training (default 2; 3 with --fit-from-scratch)")
    add_mixture_arguments(p)
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="epochs when training (default %(default)s)")
    p.add_argument("--subset", type=positive_int, default=DEFAULTS.subset,
                   help="held-out points to compare on (also the held-out set of --fit-from-scratch) (default %(default)s)")
    p.add_argument("--iwae-samples", type=positive_int, default=DEFAULTS.iwae_samples, metavar="K",
                   help="importance samples per point, the same for all methods (default %(default)s)")
    p.add_argument("--elbo-samples", type=positive_int, default=DEFAULTS.elbo_samples, help="draws per point for ELBOs (default %(default)s)")
    p.add_argument("--refine-steps", type=positive_int, default=DEFAULTS.refine_steps, metavar="K",
                   help="Adam steps refining the encoder's q, decoder fixed: the semi_amortized row (default %(default)s)")
    p.add_argument("--ais-steps", type=positive_int, metavar="T",
                   help="log p(x) of the gaps by AIS with T distributions from the NUTS proposal (default: "
                        "importance sampling with that proposal)")
    p.add_argument("--ais-chains", type=positive_int, default=DEFAULTS.ais_chains, metavar="K", help="AIS chains (default %(default)s)")
    p.add_argument("--chains", type=positive_int, default=DEFAULTS.chains, help="NUTS chains (default %(default)s)")
    p.add_argument("--warmup", type=positive_int, default=DEFAULTS.warmup, help="NUTS warm-up steps (default %(default)s)")
    p.add_argument("--samples", type=positive_int, default=DEFAULTS.samples, help="NUTS draws per chain (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="report directory (default runs/compare-<dataset>-<timestamp>)")
    families = p.add_argument_group("--families (the gaps of Cremer et al. per variational family)")
    families.add_argument("--families", metavar="F[,F...]",
                          help="train a model per family (ffg, full_rank, flow) and decompose each one's gaps side by "
                               "side instead (default: the four-method comparison)")
    families.add_argument("--flow", choices=FLOWS, default=DEFAULTS.flow, help="the flow family's transforms (default %(default)s)")
    families.add_argument("--flow-layers", type=int, default=DEFAULTS.flow_layers, metavar="N",
                          help="the flow family's transforms after the Gaussian (default %(default)s)")
    scratch = p.add_argument_group("--fit-from-scratch (Kingma & Welling 2013, figure 3)")
    scratch.add_argument("--fit-from-scratch", action="store_true",
                         help="learn the decoder on small data with each method instead; compare held-out log p(x)")
    scratch.add_argument("--num-train", type=positive_int, default=DEFAULTS.num_train, help="training points (default %(default)s)")
    scratch.add_argument("--passes", type=positive_int, default=DEFAULTS.passes, help="passes over the data per method (default %(default)s)")
    scratch.add_argument("--budget", type=positive_float, metavar="SECONDS",
                         help="train each SVI learner for this much wall time instead of --passes")
    scratch.add_argument("--hidden-dims", type=int_list, default=DEFAULTS.hidden_dims, metavar="H[,H...]",
                         help="hidden layer widths (default 400)")
    scratch.add_argument("--objectives", type=objective_list, default=",".join(DEFAULTS.objectives), metavar="E[,E...]",
                         help="objectives the amortized guide also learns with, each a learner of its own, or none "
                              "(default %(default)s)")
    scratch.add_argument("--particles", type=positive_int, default=DEFAULTS.particles, metavar="K",
                         help="importance samples per point of --objectives iwae, iwae-dreg and rws (default %(default)s)")
    scratch.add_argument("--m-steps", type=positive_int, default=DEFAULTS.m_steps, help="MCEM decoder steps per pass (default %(default)s)")
    scratch.add_argument("--mcem-warmup", type=positive_int, default=DEFAULTS.mcem_warmup, help="MCEM NUTS warm-up per pass (default %(default)s)")
    scratch.add_argument("--mcem-samples", type=positive_int, default=DEFAULTS.mcem_samples, help="MCEM NUTS draws per pass (default %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that models or guides it registers can be named (repeatable; a "
                        "run's own --import modules are imported again without it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_calibration_arguments(p)
    return p


def objective_list(text):
    """--objectives: a comma-separated list of pyro_vae.studies.scratch.OBJECTIVES, or "none"."""
    if isinstance(text, tuple):
        return text
    if text == "none":
        return ()
    names, unknown = names_in(text, OBJECTIVES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown objective(s) {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(OBJECTIVES)} or none")
    return names


def main(argv=None):
    args = parser().parse_args(argv)
    settings = CompareSettings(**{k: v for k, v in vars(args).items() if k not in ("run", "out", "progress", *SBC_FLAGS)},
                               calibrate=args.calibrate or (), calibration=settings_from_args(args))
    try:
        with report_out_of_memory("compare"):
            compare(args.run, settings, args.out, args.progress)
    except (UsageError, DataError, CheckpointError) as error:
        exit_with("compare", error)


if __name__ == "__main__":
    main()
