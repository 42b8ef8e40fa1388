"""Train a model with a guide by SVI and write a run directory.

    python -m pyro_vae.fit --guide amortized
    python -m pyro_vae.fit --dataset mnist --data-dir ../shared/data/mnist --latent-dim 50 --epochs 20

Python API: ``fit(FitConfig(...))`` does exactly what the command does and
returns the trained model, guide and data with the metrics; ``resume``
continues a stopped run; ``load_run`` rebuilds a run from its directory.
``--guide nuts`` hands over to ``pyro_vae.nuts``; under ``torchrun`` the
run is data-parallel (``pyro_vae.distributed``).

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per
epoch), ``summary.json``, ``checkpoint.pt`` (tensors only) and the figures
``reconstructions.png``, ``samples.png``, ``latent.png``, ``elbo.png``.
"""

import json
import os
import platform
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import pyro
import torch
from tqdm import tqdm

from pyro_vae import __version__, distributed, plots
from pyro_vae.checkpoint import (CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json,
                                 write_text)
from pyro_vae.cli import (ArgumentParser, UsageError, exit_with, import_user_modules, int_list, nonnegative_int,
                          positive_float, positive_int)
from pyro_vae.data import BINARIZE_MODES, DATASETS, DataError, load_dataset
from pyro_vae.evaluate import log_likelihood
from pyro_vae.guides.decoder_posterior import DecoderPosterior, WithDecoderPosterior
from pyro_vae.registry import get_guide, get_model, guide_names, model_names
from pyro_vae.train import ELBOS, Interrupted, NonFiniteLoss, elbo_per_example, make_svi, train_epoch

NON_AMORTIZED_TEST_EVERY = 10
NUTS_MODES = ("fixed-decoder", "mcem")


@dataclass
class FitConfig:
    """Every setting of a run; ``config.json`` stores it."""

    model: str | None = None  # None: the dataset's default model
    guide: str = "amortized"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    num_train: int | None = None  # first N training examples (synthetic: generate N)
    num_test: int | None = None
    data_dim: int | None = None  # synthetic datasets only
    data_seed: int | None = None  # synthetic datasets only
    binarize: str | None = None  # None: the dataset's default
    latent_dim: int = 2
    hidden_dims: tuple = (400,)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    local_lr: float = 1e-2  # per-datapoint parameters (meanfield), stepped once per epoch each
    elbo: str = "trace"
    clip_norm: float | None = None  # clip the global gradient norm of the (dense) parameters
    bayesian_decoder: bool = False  # N(0, I) priors on decoder weights, mean-field q(theta) ("full VB")
    seed: int = 0
    device: str = "auto"
    out: str | None = None  # None: runs/<dataset>-<guide>-<timestamp>
    # --guide nuts (see pyro_vae.nuts)
    nuts_mode: str = "fixed-decoder"  # or "mcem"
    decoder_from: str | None = None  # fixed-decoder: the run whose decoder is held fixed
    subset: int = 100
    chains: int = 4
    warmup: int = 500
    samples: int = 500
    em_iterations: int = 20  # mcem: E-step / M-step rounds
    m_steps: int = 20  # mcem: Adam steps on the decoder per round
    eval_iwae_samples: int = 1000  # K of the log-likelihood estimate in summary.json
    eval_max_examples: int = 1000  # on the first this many test examples
    imports: list = field(default_factory=list)  # user modules that register models/guides

    def validate(self):
        """Raise :class:`UsageError` for values no run can use."""
        checks = [
            (self.latent_dim >= 1, f"latent dim must be at least 1, got {self.latent_dim}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and self.lr != float("inf"), f"learning rate must be positive, got {self.lr}"),
            (self.local_lr > 0 and self.local_lr != float("inf"), f"local learning rate must be positive, got {self.local_lr}"),
            (all(h >= 1 for h in self.hidden_dims), f"hidden dims must be positive, got {self.hidden_dims}"),
            (self.elbo in ELBOS, f"elbo must be one of {', '.join(ELBOS)}, got {self.elbo!r}"),
            (self.nuts_mode in NUTS_MODES, f"nuts mode must be one of {', '.join(NUTS_MODES)}, got {self.nuts_mode!r}"),
            (min(self.subset, self.chains, self.samples, self.em_iterations, self.m_steps) >= 1 and self.warmup >= 0,
             "--subset, --chains, --samples, --em-iterations and --m-steps must be positive, --warmup non-negative"),
            (self.binarize in (None, *BINARIZE_MODES), f"binarize must be one of {', '.join(BINARIZE_MODES)}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


@dataclass
class FitResult:
    model: torch.nn.Module
    guide: torch.nn.Module
    data: object
    config: FitConfig
    metrics: list
    summary: dict
    out: Path


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N, ...)") from None


def build(config, data):
    """The model and guide named in ``config``, sized for ``data``."""
    import_user_modules(config.imports)
    try:
        model_cls = get_model(config.model or data.default_model)
        guide_cls = get_guide(config.guide)
    except KeyError as error:
        raise UsageError(error.args[0]) from None
    if getattr(model_cls, "binary_data", False) and not data.is_binary():
        raise UsageError(
            f"model {model_cls.name} has a Bernoulli likelihood but {data.name} with --binarize "
            f"{data.binarize} is not binary: use --binarize dynamic or static, or a Gaussian model"
        )
    model = model_cls(data.data_dim, config.latent_dim, config.hidden_dims).to(data.device)
    guide = guide_cls(model, data.num_train, config.hidden_dims).to(data.device)
    if config.bayesian_decoder:
        if not isinstance(getattr(model, "decoder", None), torch.nn.Module) or config.guide == "nuts":
            raise UsageError(f"--bayesian-decoder needs a model with a decoder network and an SVI guide, "
                             f"not {model.name} with {config.guide}")
        model.bayesian_decoder = True
        guide = WithDecoderPosterior(guide, DecoderPosterior(model).to(data.device))
    return model, guide


@contextmanager
def evaluation_decoder(model, guide):
    """Inside, a Bayesian decoder is fixed at its posterior mean E_q[theta]
    (the plug-in decoder every evaluation uses); point estimates are untouched."""
    if not model.bayesian_decoder:
        yield
        return
    model.decoder_values = guide.decoder_posterior.mean()
    try:
        yield
    finally:
        model.decoder_values = None


def decoder_means(model, guide, z, draws=16):
    """E[x | z] from the decoder; with a Bayesian decoder, averaged over ``draws`` theta ~ q(theta)."""
    if not model.bayesian_decoder:
        return model.likelihood(z).mean
    total = 0.0
    try:
        for _ in range(draws):
            model.decoder_values = guide.decoder_posterior.sample()
            total = total + model.likelihood(z).mean
    finally:
        model.decoder_values = None
    return total / draws


def load_data(config, device):
    options = {k: v for k, v in (("data_dim", config.data_dim), ("seed", config.data_seed)) if v is not None}
    return load_dataset(config.dataset, config.data_dir, config.binarize, device, download=config.download,
                        num_train=config.num_train, num_test=config.num_test, **options)


def versions():
    import numpy
    import torchvision

    return {"python": platform.python_version(), "pyro_vae": __version__, "pyro": pyro.__version__,
            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__}


def default_out(config):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.dataset}-{config.guide}-{stamp}"


def prepare_out(out, cluster=None):
    """Check that ``out`` is new or empty on every rank, then create it on the main rank."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: already exists and is not empty; choose a new directory")
    if cluster is not None and cluster.active:
        out = Path(cluster.broadcast_object(str(out)))  # rank 0's name (default names carry a timestamp)
    if cluster is None or cluster.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out


@torch.no_grad()
def save_figures(out, model, guide, data, metrics):
    """reconstructions.png, samples.png, latent.png and elbo.png."""
    plots.save_elbo_curves(out / "elbo.png", metrics)
    model.eval()
    guide.eval()
    x = data.test_x[:2000]
    with evaluation_decoder(model, guide):
        z_mean = guide.posterior(x).mean
    plots.save_latent_scatter(out / "latent.png", z_mean, None if data.test_y is None else data.test_y[:2000])
    if data.image_shape is None:
        return
    reconstruction = decoder_means(model, guide, z_mean[:32])
    plots.save_reconstructions(out / "reconstructions.png", x[:32], reconstruction, data.image_shape)
    z = torch.randn(64, model.latent_dim, device=data.device)
    plots.save_image_grid(out / "samples.png", decoder_means(model, guide, z), data.image_shape)


def checkpoint_state(model, guide, svi, epoch, metrics, config):
    return {
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optimizer": svi.optim.get_state(),
        "rng": rng_state(),
        "epoch": epoch,
        "metrics": metrics,
        "config": json.dumps(config_dict(config)),
    }


def config_dict(config):
    d = asdict(config)
    d["hidden_dims"] = list(config.hidden_dims)
    return d


def fit(config, progress=True, log=print, should_stop=None):
    """Train ``config.model`` with ``config.guide`` by SVI; write the run directory.

    Each epoch: one pass of SVI steps over a fresh permutation, then the test
    ELBO (nats per example, one sample per test point), one line in
    ``metrics.jsonl`` and a checkpoint. Returns a :class:`FitResult`.
    Raises :class:`Interrupted` when ``should_stop()`` turns true and
    :class:`NonFiniteLoss` on a NaN loss; the last checkpoint stays good.
    """
    config.validate()
    if config.guide == "nuts":  # MCMC, not SVI: its own loop
        from pyro_vae.nuts import fit_nuts

        return fit_nuts(config, progress, log)
    cluster, device_name = distributed.start(config.device)
    try:
        device = resolve_device(device_name)
        pyro.set_rng_seed(config.seed + cluster.rank)  # ranks draw different noise
        data = load_data(config, device)
        model, guide = build(config, data)
        cluster.broadcast_modules(model, guide)
        config.model = model.name
        config.binarize = data.binarize
        out = prepare_out(config.out or default_out(config), cluster)
        config.out = str(out)
        svi = make_svi(model, guide, config.lr, config.elbo, local_lr=config.local_lr, clip_norm=config.clip_norm)
        if cluster.is_main:
            write_config(out, config, data, device, cluster)
            # epoch 0: a checkpoint before any step, so even a run stopped in
            # its first epoch can be resumed
            save_checkpoint(out / "checkpoint.pt", checkpoint_state(model, guide, svi, 0, [], config))
        return train_epochs(config, data, model, guide, svi, out, 0, [], progress, log, should_stop, cluster)
    finally:
        distributed.stop(cluster)


def resume(run_dir, epochs=None, progress=True, log=print, should_stop=None):
    """Continue the run in ``run_dir`` from its last checkpoint: model, guide,
    optimizer and RNG states, epoch and metrics, so that on CPU the result is
    the same as a run that was never stopped. ``epochs`` extends the run."""
    out = Path(run_dir)
    state = load_checkpoint(out / "checkpoint.pt")
    config = config_from_checkpoint(state, out / "checkpoint.pt")
    if epochs is not None:
        config.epochs = epochs
        config.validate()
    if state["epoch"] >= config.epochs:
        raise UsageError(f"{out} already ran {state['epoch']} of {config.epochs} epochs; pass --epochs N to extend it")
    cluster, device_name = distributed.start(config.device)
    try:
        device = resolve_device(device_name)
        data = load_data(config, device)
        model, guide = build(config, data)
        load_states(model, guide, state, out / "checkpoint.pt")
        svi = make_svi(model, guide, config.lr, config.elbo, local_lr=config.local_lr, clip_norm=config.clip_norm)
        svi.optim.set_state(state["optimizer"])
        set_rng_state(state["rng"])  # rank 0's: exact for one process
        if cluster.rank > 0:  # other ranks: their own noise, the same in every resume
            pyro.set_rng_seed(config.seed + cluster.rank + 7919 * state["epoch"])
        if cluster.is_main:
            write_config(out, config, data, device, cluster)
        log(f"resuming {out} after epoch {state['epoch']} of {config.epochs}")
        return train_epochs(config, data, model, guide, svi, out, state["epoch"], state["metrics"], progress, log,
                            should_stop, cluster)
    finally:
        distributed.stop(cluster)


def write_config(out, config, data, device, cluster):
    write_json(out / "config.json", {
        **config_dict(config),
        "device_resolved": str(device),
        "world_size": cluster.world_size,
        "num_train": data.num_train,
        "num_test": len(data.test_x),
        "data_dim": data.data_dim,
        "versions": versions(),
        "command": sys.argv if __name__ == "__main__" else None,
    })


def train_epochs(config, data, model, guide, svi, out, start_epoch, metrics, progress, log, should_stop, cluster):
    """Epochs ``start_epoch + 1 .. config.epochs``, then figures and summary.
    Every rank trains; only the main rank evaluates and writes."""
    if not cluster.is_main:
        progress, log = False, (lambda *args: None)
    ranks = f" x {cluster.world_size} processes" if cluster.active else ""
    log(f"{model.name} + {config.guide} on {data.name} ({data.num_train} train, {len(data.test_x)} test, "
        f"binarize {data.binarize}) on {data.device}{ranks}; writing {out}")
    # A guide without an encoder fits a fresh q(z) to each test point whenever
    # it is scored, so it is scored on the capped evaluation subset, every
    # NON_AMORTIZED_TEST_EVERY epochs and at the last (test_elbo null between).
    amortized = getattr(guide, "amortized", True)
    test_x = data.test_x if amortized else data.test_x[: config.eval_max_examples]
    metrics = list(metrics)
    start = time.perf_counter()
    epochs = tqdm(range(start_epoch + 1, config.epochs + 1), desc="epochs", disable=not progress, unit="epoch")
    for epoch in epochs:
        model.train()
        guide.train()
        try:
            train_elbo, seconds = train_epoch(svi, data, config.batch_size, progress, f"epoch {epoch}", should_stop,
                                              cluster)
        except (NonFiniteLoss, Interrupted) as error:
            error.epoch, error.out = epoch, out
            raise
        model.eval()
        guide.eval()
        if not cluster.is_main:
            continue
        test_elbo = None
        if amortized or epoch % NON_AMORTIZED_TEST_EVERY == 0 or epoch == config.epochs:
            with evaluation_decoder(model, guide):
                test_elbo = elbo_per_example(model, guide.posterior, test_x, config.elbo)
        metrics.append({"epoch": epoch, "train_elbo": train_elbo, "test_elbo": test_elbo, "seconds": seconds})
        write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
        save_checkpoint(out / "checkpoint.pt", checkpoint_state(model, guide, svi, epoch, metrics, config))
        test_text = "" if test_elbo is None else f"{test_elbo:10.3f}"
        epochs.set_postfix(train=f"{train_elbo:.2f}", test=test_text.strip(), refresh=False)
        if not progress:
            log(f"epoch {epoch:4d}  train ELBO {train_elbo:10.3f}  test ELBO {test_text:>10}  {seconds:6.2f}s")

    if not cluster.is_main:
        return FitResult(model, guide, data, config, metrics, None, out)
    save_figures(out, model, guide, data, metrics)
    x = data.test_x[: config.eval_max_examples]
    with evaluation_decoder(model, guide):
        ll = log_likelihood(model, guide.posterior, x, config.eval_iwae_samples, progress=progress)
    last = metrics[-1]
    summary = {
        "train_elbo": last["train_elbo"],
        "test_elbo": last["test_elbo"],
        "log_likelihood": ll.mean().item(),
        "log_likelihood_examples": len(x),
        "log_likelihood_iwae_samples": config.eval_iwae_samples,
        "epochs": config.epochs,
        "seconds": time.perf_counter() - start,
        "seconds_per_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
    }
    write_json(out / "summary.json", summary)
    log(f"test ELBO {summary['test_elbo']:.3f}, log p(x) >= {summary['log_likelihood']:.3f} (K={config.eval_iwae_samples}, "
        f"{len(x)} test examples) nats per example after {config.epochs} epochs ({summary['seconds']:.1f}s); wrote {out}")
    return FitResult(model, guide, data, config, metrics, summary, out)


def config_from_checkpoint(state, path):
    try:
        saved = json.loads(state["config"])
        config = FitConfig(**{f.name: saved[f.name] for f in fields(FitConfig) if f.name in saved})
        config.hidden_dims = tuple(config.hidden_dims)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: no usable configuration inside ({error})") from None
    return config


def load_states(model, guide, state, path):
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (KeyError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not match its configuration ({first})") from None


def load_run(run_dir, device="cpu"):
    """Rebuild a run's model, guide and data from its directory (tensors only).

    Raises :class:`CheckpointError` if the checkpoint is missing, unsafe or
    does not fit the configuration."""
    path = Path(run_dir) / "checkpoint.pt"
    state = load_checkpoint(path)
    config = config_from_checkpoint(state, path)
    config.device = str(device)
    data = load_data(config, resolve_device(config.device))
    model, guide = build(config, data)
    load_states(model, guide, state, path)
    if model.bayesian_decoder:  # evaluation and comparison use the plug-in decoder E_q[theta]
        model.decoder_values = guide.decoder_posterior.mean()
    model.eval()
    guide.eval()
    return model, guide, data, config, state


def parser():
    p = ArgumentParser(prog="python -m pyro_vae.fit", description=__doc__.split("\n\n")[0])
    d = FitConfig()
    p.add_argument("--model", help=f"generative model: {', '.join(model_names())} (default: the dataset's)")
    p.add_argument("--guide", default=d.guide, help=f"variational family: {', '.join(guide_names())} (default %(default)s)")
    p.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS), metavar="NAME",
                   help=f"{', '.join(sorted(DATASETS))} (default %(default)s: bundled, no files needed)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's files")
    p.add_argument("--download", action="store_true", help="download MNIST / Fashion-MNIST through torchvision (needs a network)")
    p.add_argument("--num-train", type=positive_int, metavar="N", help="use the first N training examples (synthetic data: generate N)")
    p.add_argument("--num-test", type=positive_int, metavar="N", help="use the first N test examples (synthetic data: generate N)")
    p.add_argument("--data-dim", type=positive_int, metavar="D", help="dimension of synthetic data (linear_gaussian; default 10)")
    p.add_argument("--data-seed", type=int, metavar="S", help="seed of synthetic data (linear_gaussian; default 0)")
    p.add_argument("--binarize", choices=BINARIZE_MODES,
                   help="dynamic: resample x ~ Bernoulli(intensity) per minibatch; static: once, fixed seed; "
                        "none: keep intensities (default: the dataset's)")
    p.add_argument("--latent-dim", type=positive_int, default=d.latent_dim, help="dimension of z (default %(default)s)")
    p.add_argument("--hidden-dims", type=int_list, default=d.hidden_dims, metavar="H[,H...]",
                   help="hidden layer widths from the data side; the decoder mirrors them (default 400)")
    p.add_argument("--epochs", type=positive_int, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="minibatch size (default %(default)s)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--local-lr", type=positive_float, default=d.local_lr,
                   help="learning rate of per-datapoint parameters (--guide meanfield) (default %(default)s)")
    p.add_argument("--elbo", choices=sorted(ELBOS), default=d.elbo,
                   help="trace: Trace_ELBO (Monte Carlo); meanfield: TraceMeanField_ELBO (analytic KL) (default %(default)s)")
    p.add_argument("--bayesian-decoder", action="store_true",
                   help="N(0, I) priors on the decoder weights and a mean-field Gaussian q(theta) over them "
                        "(full VB); evaluation uses the decoder at E_q[theta], figures average 16 draws")
    p.add_argument("--clip-norm", type=positive_float, metavar="C",
                   help="clip the global gradient norm of the model and encoder parameters to C (default: no clipping)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its last checkpoint with its saved settings (--epochs N extends it)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<dataset>-<guide>-<timestamp>)")
    nuts = p.add_argument_group("--guide nuts")
    nuts.add_argument("--nuts-mode", choices=NUTS_MODES, default=d.nuts_mode,
                      help="fixed-decoder: sample z of held-out points under --decoder-from's decoder; mcem: Monte "
                           "Carlo EM from scratch on --subset training points (default %(default)s)")
    nuts.add_argument("--decoder-from", metavar="RUN_DIR", help="the run whose decoder is held fixed")
    nuts.add_argument("--subset", type=positive_int, default=d.subset, metavar="N", help="points (default %(default)s)")
    nuts.add_argument("--chains", type=positive_int, default=d.chains, help="chains, all moved together in one batch (default %(default)s)")
    nuts.add_argument("--warmup", type=nonnegative_int, default=d.warmup, help="warm-up steps per chain (default %(default)s)")
    nuts.add_argument("--samples", type=positive_int, default=d.samples, help="draws per chain (default %(default)s)")
    nuts.add_argument("--em-iterations", type=positive_int, default=d.em_iterations, help="mcem rounds (default %(default)s)")
    nuts.add_argument("--m-steps", type=positive_int, default=d.m_steps,
                      help="mcem: Adam steps (--lr) on the decoder per round (default %(default)s)")
    p.add_argument("--eval-iwae-samples", type=positive_int, default=d.eval_iwae_samples, metavar="K",
                   help="importance samples for the log-likelihood in summary.json (default %(default)s)")
    p.add_argument("--eval-max-examples", type=positive_int, default=d.eval_max_examples, metavar="N",
                   help="test examples for that estimate (default %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that models or guides it registers can be named (repeatable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="print one line per epoch instead of progress bars")
    return p


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


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    report = exit_with if main_rank else quiet_exit  # under torchrun, rank 0 alone reports
    changed = {a.dest for a in p._actions if a.dest != "help" and getattr(args, a.dest) != a.default}
    if args.resume and changed - RESUME_FLAGS:
        flags = ", ".join(sorted("--" + d.replace("_", "-") for d in changed - RESUME_FLAGS))
        exit_with("fit", f"--resume continues a run with its saved settings; only --epochs may change, not {flags}")
    try:
        with stop_on_signals() as stop:
            if args.resume:
                resume(args.resume, args.epochs, args.progress, tqdm.write, stop)
            else:
                settings = {k: v for k, v in vars(args).items() if k not in ("progress", "resume")}
                settings["epochs"] = args.epochs or FitConfig.epochs
                fit(FitConfig(**settings), args.progress, tqdm.write, stop)
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
        report("fit", f"non-finite loss ({error.loss}) at epoch {error.epoch}, step {error.step}; "
                         f"{error.out}/checkpoint.pt still holds epoch {error.epoch - 1}. Likely causes: a learning "
                         f"rate too high (lower --lr, or --clip-norm 10), data outside the likelihood's support, "
                         f"or a scale collapsing to zero", status=1)


if __name__ == "__main__":
    main()
