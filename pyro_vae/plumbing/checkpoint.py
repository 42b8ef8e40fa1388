"""Checkpoints, written atomically (``files.atomic_path``) and loaded safely.

A checkpoint holds tensors and plain values only (state dicts, optimizer
state, RNG states, the epoch, the metrics so far) and is read with
``torch.load(..., weights_only=True)``, which refuses anything that would
run code while unpickling.
"""

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.plumbing.files import atomic_path

FORMAT = "pyro_vae.plumbing.checkpoint/1"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, unsafe or from another config."""


def rng_state():
    """Every RNG the run draws from, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    # random.setstate wants tuples where a round trip may give lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path, state):
    """``torch.save`` ``state`` (plus a format tag) atomically to ``path``."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`, running no code.

    Raises :class:`CheckpointError` with a one-line message naming the file
    for a missing file, a file that is not a checkpoint (truncated, foreign)
    or one that needs code to load (a pickled object, not tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any GLOBAL (a class or function to call); other
        # unpickling failures mean the bytes are not a pickle at all.
        if "global" in str(error).lower():
            raise CheckpointError(
                f"{path}: refused: it holds pickled objects, not just tensors, and loading it could run code"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pyro_vae checkpoint (no {FORMAT!r} format tag)")
    return state
