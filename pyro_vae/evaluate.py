"""Evaluate a run: ``python -m pyro_vae.evaluate RUN_DIR``.

    python -m pyro_vae.evaluate RUN_DIR [--iwae-samples 5000] [--split test] [--max-examples N]

Writes ``RUN_DIR/eval.json`` and prints a short table, in nats per example:
the importance-weighted log p(x), the ELBO and its terms, active units, the
exact log p(x) where the model has one, and with ``--estimator ais`` or
``--bdmc`` annealed importance sampling's estimate and bounds. What each
figure is: ``pyro_vae.studies.evaluation``. This module parses the flags into
an ``EvaluateSettings``, calls ``pyro_vae.evaluate`` and prints; from Python:
``pv.evaluate(run_dir, pv.EvaluateSettings(...))``.
"""

from pyro_vae import EvaluateSettings, UsageError, evaluate
from pyro_vae.data import DataError
from pyro_vae.plumbing.checkpoint import CheckpointError
from pyro_vae.plumbing.cli import ArgumentParser, exit_with, positive_int, report_out_of_memory
from pyro_vae.studies.calibration import SBC_FLAGS, add_calibration_arguments, settings_from_args

DEFAULTS = EvaluateSettings()


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by python -m pyro_vae.fit")
    p.add_argument("--iwae-samples", type=positive_int, default=DEFAULTS.iwae_samples, metavar="K",
                   help="importance samples per example (default %(default)s, as Burda et al. 2015)")
    p.add_argument("--split", choices=("test", "train"), default=DEFAULTS.split, help="which split (default %(default)s)")
    p.add_argument("--max-examples", type=positive_int, metavar="N", help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                   help="examples per batch (default %(default)s)")
    p.add_argument("--estimator", choices=("iwae", "ais"), default=DEFAULTS.estimator,
                   help="iwae: importance sampling with the run's q; ais: annealed importance sampling too "
                        "(default %(default)s)")
    p.add_argument("--ais-steps", type=positive_int, default=DEFAULTS.ais_steps, metavar="T",
                   help="AIS intermediate distributions (default %(default)s)")
    p.add_argument("--ais-chains", type=positive_int, default=DEFAULTS.ais_chains, metavar="K",
                   help="AIS chains per example (default %(default)s)")
    p.add_argument("--ais-start", choices=("prior", "q"), default=DEFAULTS.ais_start,
                   help="AIS starts from the prior p(z) or from the run's q(z | x) (default %(default)s)")
    p.add_argument("--bdmc", action="store_true",
                   help="bound log p(x) from both sides on data simulated from the model (forward and reverse "
                        "AIS, the AIS settings above, --max-examples points, default 100)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default %(default)s)")
    p.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that models or guides it registers can be named (repeatable; a "
                        "run's own --import modules are imported again without it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_calibration_arguments(p)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    flags = vars(args)
    settings = EvaluateSettings(**{k: v for k, v in flags.items() if k not in ("run_dir", "progress", *SBC_FLAGS)},
                                calibrate=args.calibrate or (), calibration=settings_from_args(args))
    try:
        with report_out_of_memory("evaluate"):
            evaluation = evaluate(args.run_dir, settings, progress=args.progress)
    except (CheckpointError, DataError, UsageError) as error:
        exit_with("evaluate", error)
    print(evaluation.table())
    print(f"wrote {evaluation.path}")


if __name__ == "__main__":
    main()
