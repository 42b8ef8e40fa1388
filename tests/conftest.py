import gzip
import importlib
import struct
from pathlib import Path

import numpy as np
import pyro
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Each test starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def write_idx(path, array, gz=True):
    """Write ``array`` (uint8) in the IDX format MNIST uses."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim  # 0x08: unsigned byte
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def make_mnist_dir(folder, n_train=20, n_test=10, size=28, seed=0):
    """Four small IDX files with MNIST's names; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.fixture
def mnist_dir(tmp_path):
    make_mnist_dir(tmp_path / "mnist")
    return tmp_path / "mnist"


def fit_linear_gaussian(out, epochs, iwae_samples):
    """linear_gaussian (pPCA) fitted by SVI with the amortized guide: the
    decoder every closed-form check of an estimator starts from."""
    from pyro_vae.runs.config import EvaluationSettings
    from pyro_vae import FitConfig, fit

    config = FitConfig(dataset="linear_gaussian", latent_dim=2, hidden_dims=(64,), epochs=epochs, lr=1e-2,
                       batch_size=100, out=str(out), evaluation=EvaluationSettings(iwae_samples))
    return fit(config, progress=False, log=lambda *a: None)


def run_command(command, *argv, capsys):
    """``python -m pyro_vae.<command> argv`` in this process, as a user runs it: (exit status, the
    non-empty lines it wrote to stderr). Faster than a subprocess, and the same ``main``."""
    main = importlib.import_module(f"pyro_vae.{command}").main
    try:
        main([str(a) for a in argv])
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]
