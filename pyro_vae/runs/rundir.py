"""The run directory: what a run writes, and how a run is read back.

| file | written by |
|---|---|
| ``config.json`` | :func:`write_config`: every setting, resolved names, sizes, versions, the command |
| ``metrics.jsonl`` | :func:`write_metrics`: one line per epoch (or MCEM round) |
| ``checkpoint.pt`` | ``checkpoint.save_checkpoint``: tensors only |
| ``summary.json`` | :func:`finish_run`, with what the driver (SVI, EM or MCMC) found |
| ``*.png`` | :func:`finish_run`, after the rest: what ``run_figures`` computed |

Every file is written to a temporary name and renamed into place, and
every driver ends with :func:`finish_run`, so a run that ends has its
checkpoint and summary whatever its figures do.
"""

import importlib.metadata
import json
import platform
from dataclasses import dataclass
import sys
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pyro
import torch

from pyro_vae.runs.assembly import build, build_model, load_data, resolve_device
from pyro_vae.plumbing.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_vae.plumbing.files import write_json, write_text
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.runs.config import FitConfig
from pyro_vae.infer.moment_matching import MomentMatchedPosterior


def default_out(config):
    """``runs/<dataset>-<guide, or the inference method>-<timestamp>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    method = config.guide if config.inference == "svi" else config.inference
    return Path("runs") / f"{config.dataset}-{method}-{stamp}"


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


def versions():
    import numpy

    # the installed version, read from its metadata: importing torchvision to ask costs two seconds
    return {"python": platform.python_version(), "pyro_vae": importlib.metadata.version("pyro_vae"), "pyro": pyro.__version__,
            "torch": torch.__version__, "torchvision": importlib.metadata.version("torchvision"),
            "numpy": numpy.__version__}


def command_line():
    """How this process was started, as a user would retype it: ``python -m
    pyro_vae.<command> ...`` (``sys.argv[0]`` is the module's file under
    ``-m``), or None inside another program (a notebook, a test)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or not spec.name.startswith("pyro_vae."):
        return None
    return ["python", "-m", spec.name, *sys.argv[1:]]


def write_config(out, config, data, device, world_size=1):
    write_json(out / "config.json", {
        **config.as_dict(),
        "device_resolved": str(device),
        "world_size": world_size,
        "num_train": data.num_train,
        "num_test": len(data.test_x),
        "data_dim": data.data_dim,
        "versions": versions(),
        "command": command_line(),
    })


def write_metrics(out, metrics):
    write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def finish_run(out, summary, log, figures=None, *, metrics=None, checkpoint=None):
    """The end of every run, in an order that leaves a usable directory whatever a figure does:
    ``metrics.jsonl`` and ``checkpoint.pt`` (where the driver has not written them after its last
    step), ``summary.json`` (with ``notes``, one line per figure skipped, for a run with
    ``figures``: ``run_figures.RunFigures``), then the figures. Returns the summary written."""
    if metrics is not None:
        write_metrics(out, metrics)
    if checkpoint is not None:
        save_checkpoint(out / "checkpoint.pt", checkpoint)
    if figures is not None:
        summary = {**summary, "notes": figures.notes}
    write_json(out / "summary.json", summary)
    if figures is not None:
        for note in figures.notes:
            log(f"note: {note}")
        for name, draw in figures.drawings:
            draw(out / name)
    return summary


def config_from_checkpoint(state, path):
    """The :class:`FitConfig` saved inside a checkpoint."""
    try:
        return FitConfig.from_dict(json.loads(state["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: no usable configuration inside ({error})") from None


@dataclass
class FitResult:
    """What ``fit`` returns: the trained model, its guide (or an MCMC run's
    posterior summary), the data, the settings, per-epoch metrics, the
    summary written to ``summary.json`` and the run directory."""

    model: torch.nn.Module
    guide: torch.nn.Module
    data: object
    config: object
    metrics: list
    summary: dict
    out: Path


class Run(NamedTuple):
    """A run read back from its directory."""

    model: torch.nn.Module
    guide: torch.nn.Module  # or, for an MCMC run, its posterior summary
    data: object
    config: object
    checkpoint: dict


def load_states(model, guide, state, path):
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (KeyError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not match its configuration ({first})") from None


def load_run(run_dir, device="cpu"):
    """Rebuild a run's model, guide (or MCMC posterior) and data from its
    directory (tensors only). Raises :class:`CheckpointError` if the
    checkpoint is missing, unsafe or does not fit the configuration."""
    path = Path(run_dir) / "checkpoint.pt"
    state = load_checkpoint(path)
    config = config_from_checkpoint(state, path)
    config.device = str(device)
    data = load_data(config, resolve_device(config.device))
    if config.inference == "nuts":
        model = build_model(config, data)
        guide = MomentMatchedPosterior(model)
    else:
        model, guide = build(config, data)
    load_states(model, guide, state, path)
    model.eval()
    guide.eval()
    return Run(model, guide, data, config, state)
