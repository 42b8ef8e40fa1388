"""Datasets by name, held whole as tensors on the training device.

The loaders live in ``pyro_vae.data.loaders``. A :class:`Data` binarizes what
they return and moves it to the device; a minibatch is an index slice of a
per-epoch permutation, so there is no per-example DataLoader or transform on
the hot path.

Binarization (``--binarize``): ``dynamic`` draws x ~ Bernoulli(intensity)
afresh for every training minibatch (Burda et al. 2015) and binarizes the
test set once with a fixed seed; ``static`` binarizes both sets once with a
fixed seed; ``none`` keeps intensities (for Gaussian likelihoods).
"""

import inspect
import os

import torch

from pyro_vae.data.loaders import DATASETS, DataError, RawDataset, load_digits, register_dataset  # noqa: F401 (API)

BINARIZE_MODES = ("dynamic", "static", "none")
# The seed of every fixed binarization: the test set is the same set of
# binary images in every run, whatever --seed says.
BINARIZATION_SEED = 0


# ---------------------------------------------------------------------------
# The dataset on the device


class Data:
    """A dataset on one device, binarized as asked.

    ``train_x`` and ``test_x`` are float tensors on ``device``; for
    ``dynamic`` binarization ``train_x`` keeps the intensities and
    :meth:`train_batch` samples a fresh binary minibatch from them.
    """

    def __init__(self, raw, name, binarize=None, device="cpu"):
        binarize = binarize or raw.default_binarize
        if binarize not in BINARIZE_MODES:
            raise DataError(f"--binarize must be one of {', '.join(BINARIZE_MODES)}, got {binarize!r}")
        self.name = name
        self.binarize = binarize
        self.image_shape = raw.image_shape
        self.default_model = raw.default_model
        self.device = torch.device(device)
        fixed = torch.Generator().manual_seed(BINARIZATION_SEED)
        train_x, test_x = raw.train_x, raw.test_x
        if binarize == "static":
            train_x = torch.bernoulli(train_x, generator=fixed)
        if binarize in ("static", "dynamic"):
            test_x = torch.bernoulli(test_x, generator=fixed)
        self.train_x = train_x.to(self.device)
        self.test_x = test_x.to(self.device)
        self.train_y = None if raw.train_y is None else raw.train_y.to(self.device)
        self.test_y = None if raw.test_y is None else raw.test_y.to(self.device)

    @property
    def data_dim(self):
        return self.train_x.shape[1]

    @property
    def num_train(self):
        return self.train_x.shape[0]

    def is_binary(self):
        """Whether every value the model will see is 0 or 1."""
        if self.binarize != "none":
            return True
        return bool(torch.all((self.train_x == 0) | (self.train_x == 1)))

    def train_batch(self, idx):
        """Rows ``idx`` of the training set, freshly binarized if dynamic."""
        x = self.train_x[idx]
        return torch.bernoulli(x) if self.binarize == "dynamic" else x

    def batches(self, batch_size):
        """Index slices of a fresh random permutation of the training set."""
        return torch.randperm(self.num_train, device=self.device).split(batch_size)


def load_dataset(name, data_dir=None, binarize=None, device="cpu", download=False,
                 num_train=None, num_test=None, **options):
    """Load dataset ``name`` and place it on ``device``; see the module
    docstring for names, files and defaults. Raises :class:`DataError`.

    ``num_train`` / ``num_test`` keep the first N examples of each split (a
    synthetic dataset generates exactly that many). ``options`` go to the
    loader (``data_dim``, ``seed`` for ``linear_gaussian``)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    if data_dir is not None and not download and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir}: no such directory")
    load = DATASETS[name]
    accepted = inspect.signature(load).parameters
    sizes = {"num_train": num_train, "num_test": num_test}
    for key in options:
        if key not in accepted:
            raise DataError(f"dataset {name} takes no option {key!r}")
    options.update({k: v for k, v in sizes.items() if v is not None and k in accepted})
    raw = load(data_dir=data_dir, download=download, **options)
    for split, n in (("train", num_train), ("test", num_test)):
        if n is None:
            continue
        x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
        if n > len(x):
            raise DataError(f"{name} has {len(x)} {split} examples, fewer than the {n} asked for")
        setattr(raw, f"{split}_x", x[:n])
        setattr(raw, f"{split}_y", None if y is None else y[:n])
    return Data(raw, name, binarize, device)
