"""The dataset loaders: name -> ``load(data_dir, download, **options)`` -> :class:`RawDataset`.

Every loader returns images flattened to rows of intensities in [0, 1];
``pyro_vae.data`` binarizes them and places them on the device. A dataset
of your own registers with ``@register_dataset("name")``.

| name              | source                                          | split               | default binarize |
|-------------------|-------------------------------------------------|---------------------|------------------|
| `digits`          | scikit-learn's bundled 8x8 digits (1797)        | 1497 / 300, seeded  | dynamic          |
| `mnist`           | torchvision, the four `*-idx?-ubyte.gz` files   | 60000 / 10000       | dynamic          |
| `fashion_mnist`   | torchvision, the four `*-idx?-ubyte.gz` files   | 60000 / 10000       | dynamic          |
| `binarized_mnist` | `binarized_mnist_{train,test}.mat` or `.amat`   | 50000 / 10000       | none (binary)    |
| `frey_face`       | `frey_rawface.mat`, key `ff`, 560 x 1965        | first 1765 / last 200 | none           |
| `linear_gaussian` | synthetic pPCA data (``load_linear_gaussian``)  | 1000 / 500 by default | none           |
| `gmm_synthetic`   | a seeded mixture of 3 Gaussians (``load_gmm_synthetic``) | 1000 / 500 by default | none  |
"""

import gzip
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae.plumbing.registry import Registry


class DataError(Exception):
    """A dataset file is missing, unreadable or not what was expected."""


@dataclass
class RawDataset:
    """Intensities in [0, 1], one flattened image per row."""

    train_x: torch.Tensor
    train_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    image_shape: tuple | None  # (height, width) for pictures, None otherwise
    default_binarize: str
    default_model: str


# ---------------------------------------------------------------------------
# Loaders: name -> function(data_dir, download, **options) -> RawDataset


def load_digits(data_dir=None, download=False):
    """scikit-learn's 8x8 digits, 0..16 scaled to [0, 1]; a fixed seeded
    permutation puts 300 images in the test set."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = perm[:300], perm[300:]
    return RawDataset(x[train], y[train], x[test], y[test], (8, 8), "dynamic", "bernoulli_mlp")


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(data_dir, name, folder):
    """The IDX file ``name`` (gzipped or not) in ``data_dir`` or in
    torchvision's own layout ``data_dir/<folder>/raw``."""
    for base in (data_dir, data_dir / folder / "raw"):
        for candidate in (base / f"{name}.gz", base / name):
            if candidate.is_file():
                return candidate
    return None


def _load_torchvision_idx(dataset_cls, data_dir, download):
    """MNIST-format data through torchvision's reader.

    torchvision wants the uncompressed files in ``root/<Class>/raw``; the
    usual distribution (and ``../shared/data/mnist``) is the four ``.gz``
    files in one read-only folder, so they are unpacked into a temporary
    root first.
    """
    folder = dataset_cls.__name__
    if data_dir is None and not download:
        files = ", ".join(f"{n}.gz" for pair in _IDX_FILES.values() for n in pair)
        raise DataError(f"{folder} needs --data-dir DIR holding {files} (or --download when online)")
    if download:
        root = Path(data_dir) if data_dir else Path.home() / ".cache" / "pyro_vae"
        try:
            splits = [dataset_cls(str(root), train=t, download=True) for t in (True, False)]
        except Exception as error:  # torchvision raises URLError, RuntimeError, ...
            raise DataError(f"could not download {folder} into {root}: {error}") from None
        return [(s.data, s.targets) for s in splits]

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: no such directory")
    paths = {}
    for split, names in _IDX_FILES.items():
        for name in names:
            path = _find_idx_file(data_dir, name, folder)
            if path is None:
                raise DataError(f"{data_dir}: missing {name}.gz (expected the four {folder} IDX files)")
            paths[name] = path
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / folder / "raw"
        raw.mkdir(parents=True)
        for name, path in paths.items():
            try:
                with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as src:
                    with open(raw / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            except (OSError, EOFError, gzip.BadGzipFile) as error:
                raise DataError(f"{path}: not a readable gzip file ({error})") from None
        splits = []
        for train, (images, labels) in zip((True, False), _IDX_FILES.values()):
            try:
                split = dataset_cls(tmp, train=train, download=False)
            except Exception as error:  # torchvision's parser asserts on bad headers
                raise DataError(
                    f"{paths[images]} / {paths[labels]}: not valid IDX image/label files "
                    f"({type(error).__name__}: {error})"
                ) from None
            if split.data.ndim != 3 or len(split.data) != len(split.targets):
                raise DataError(
                    f"{paths[images]}: expected N x 28 x 28 images matching {len(split.targets)} labels, "
                    f"got shape {tuple(split.data.shape)}"
                )
            splits.append((split.data, split.targets))
    return splits


def _idx_dataset(dataset_cls):
    def load(data_dir=None, download=False):
        (train_x, train_y), (test_x, test_y) = _load_torchvision_idx(dataset_cls, data_dir, download)
        shape = tuple(train_x.shape[1:])
        flat = lambda images: images.reshape(len(images), -1).float() / 255.0  # noqa: E731
        return RawDataset(flat(train_x), train_y.long(), flat(test_x), test_y.long(), shape, "dynamic", "bernoulli_mlp")

    return load


def load_mnist(data_dir=None, download=False):
    """MNIST through ``torchvision.datasets.MNIST``."""
    from torchvision.datasets import MNIST

    return _idx_dataset(MNIST)(data_dir, download)


def load_fashion_mnist(data_dir=None, download=False):
    """Fashion-MNIST through ``torchvision.datasets.FashionMNIST``."""
    from torchvision.datasets import FashionMNIST

    return _idx_dataset(FashionMNIST)(data_dir, download)


def _read_matrix(path, key, columns):
    """A 2-D array from a MATLAB ``.mat`` (under ``key``) or a text ``.amat``."""
    try:
        if path.suffix == ".amat":
            array = np.loadtxt(path, dtype=np.float32, ndmin=2)
        else:
            from scipy.io import loadmat

            contents = loadmat(path)
            if key not in contents:
                found = ", ".join(k for k in contents if not k.startswith("__"))
                raise DataError(f"{path}: no variable {key!r} (found: {found or 'none'})")
            array = np.asarray(contents[key], dtype=np.float32)
    except DataError:
        raise
    except Exception as error:  # scipy and numpy raise many kinds on bad files
        raise DataError(f"{path}: not a readable matrix file ({type(error).__name__}: {error})") from None
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        raise DataError(f"{path}: expected a matrix with {columns} columns, got shape {array.shape}")
    return torch.from_numpy(array)


def load_binarized_mnist(data_dir=None, download=False):
    """The fixed binarization of MNIST (Larochelle & Murray 2011):
    ``binarized_mnist_{train,test}.mat`` (key ``X``) or ``.amat`` text files.
    The validation file, if present, is not used."""
    if data_dir is None:
        raise DataError("binarized_mnist needs --data-dir DIR holding binarized_mnist_{train,test}.mat or .amat")
    data_dir = Path(data_dir)
    splits = []
    for split in ("train", "test"):
        candidates = [data_dir / f"binarized_mnist_{split}{ext}" for ext in (".mat", ".amat")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"{data_dir}: missing binarized_mnist_{split}.mat (or .amat)")
        x = _read_matrix(path, "X", 784)
        if not torch.all((x == 0) | (x == 1)):
            raise DataError(f"{path}: expected binary values 0/1")
        splits.append(x)
    return RawDataset(splits[0], None, splits[1], None, (28, 28), "none", "bernoulli_mlp")


FREY_FACE_TRAIN = 1765


def load_frey_face(data_dir=None, download=False):
    """Frey Face (Kingma & Welling 2013): ``frey_rawface.mat``, key ``ff``,
    560 x 1965 uint8, 1965 faces of 28 x 20. The frames come from one video,
    so neighbours are near-duplicates: the split is contiguous, the first
    1765 frames for training and the last 200 for testing."""
    if data_dir is None:
        raise DataError("frey_face needs --data-dir DIR holding frey_rawface.mat")
    path = Path(data_dir) / "frey_rawface.mat"
    if not path.is_file():
        raise DataError(f"{data_dir}: missing frey_rawface.mat")
    ff = _read_matrix(path, "ff", None)
    if ff.shape[0] != 560:
        raise DataError(f"{path}: expected ff of shape 560 x N (28 x 20 faces), got {tuple(ff.shape)}")
    x = ff.T.contiguous() / 255.0
    if len(x) <= FREY_FACE_TRAIN:
        raise DataError(f"{path}: expected more than {FREY_FACE_TRAIN} faces, got {len(x)}")
    return RawDataset(x[:FREY_FACE_TRAIN], None, x[FREY_FACE_TRAIN:], None, (28, 20), "none", "gaussian_mlp")


def load_linear_gaussian(data_dir=None, download=False, num_train=1000, num_test=500, data_dim=10, seed=0):
    """Synthetic data from a probabilistic PCA model with a 2-D latent:
    x = W z + b + 0.5 eps, z, eps ~ N(0, I), W and b drawn from N(0, 1) with
    ``seed``. Not images and not in [0, 1]: fit it with ``linear_gaussian``,
    whose exact marginal likelihood and posterior are known."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, 2, generator=generator)
    bias = torch.randn(data_dim, generator=generator)

    def draw(n):
        z = torch.randn(n, 2, generator=generator)
        return z @ weight.T + bias + 0.5 * torch.randn(n, data_dim, generator=generator)

    return RawDataset(draw(num_train), None, draw(num_test), None, None, "none", "linear_gaussian")


GMM_SYNTHETIC_WEIGHTS = (0.5, 0.3, 0.2)


def load_gmm_synthetic(data_dir=None, download=False, num_train=1000, num_test=500, data_dim=2, seed=0):
    """Synthetic data from a mixture of three Gaussians in ``data_dim`` dimensions (at least 2), weights
    0.5, 0.3, 0.2: means 8 apart on a circle in the first two coordinates (randomly turned) and drawn
    from N(0, 1) in the others, covariances A A^T / D + 0.25 I with A ~ N(0, 1) (``seed``). Well
    separated: fit it with ``gmm``, whose exact log p(x) is known. Labels are the true components."""
    if data_dim < 2:
        raise DataError(f"gmm_synthetic needs --data-dim of at least 2, got {data_dim}")
    generator = torch.Generator().manual_seed(seed)
    k = len(GMM_SYNTHETIC_WEIGHTS)
    angles = 2 * torch.pi * torch.arange(k) / k + 2 * torch.pi * torch.rand(1, generator=generator)
    radius = 4.0 / torch.sin(torch.tensor(torch.pi / k))  # neighbouring means 8 apart
    locs = torch.randn(k, data_dim, generator=generator)
    locs[:, 0], locs[:, 1] = radius * angles.cos(), radius * angles.sin()
    a = torch.randn(k, data_dim, data_dim, generator=generator)
    covariances = a @ a.transpose(-1, -2) / data_dim + 0.25 * torch.eye(data_dim)
    tril = torch.linalg.cholesky(covariances)

    def draw(n):
        z = torch.multinomial(torch.tensor(GMM_SYNTHETIC_WEIGHTS), n, replacement=True, generator=generator)
        eps = torch.randn(n, data_dim, 1, generator=generator)
        return locs[z] + (tril[z] @ eps).squeeze(-1), z

    (train_x, train_y), (test_x, test_y) = draw(num_train), draw(num_test)
    return RawDataset(train_x, train_y, test_x, test_y, None, "none", "gmm")


DATASETS = Registry("dataset", {
    "digits": load_digits,
    "linear_gaussian": load_linear_gaussian,
    "gmm_synthetic": load_gmm_synthetic,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "binarized_mnist": load_binarized_mnist,
    "frey_face": load_frey_face,
})


def register_dataset(name):
    """Decorator: make ``load(data_dir=None, download=False, **options)`` a
    dataset available as ``--dataset name``."""
    return DATASETS.register(name)
