import gzip

import numpy as np
import pytest
import scipy.io
import torch

from conftest import SHARED_DATA, make_mnist_dir, write_idx
from pyro_vae.data import DataError, load_dataset


def test_digits_is_embedded_and_split():
    data = load_dataset("digits")
    assert data.train_x.shape == (1497, 64) and data.test_x.shape == (300, 64)
    assert data.image_shape == (8, 8)
    assert data.binarize == "dynamic" and data.is_binary()
    # the test set is binarized once, with a fixed seed: the same in every load
    assert torch.equal(data.test_x, load_dataset("digits").test_x)
    assert set(data.test_x.unique().tolist()) <= {0.0, 1.0}


def test_dynamic_binarization_resamples_each_batch():
    data = load_dataset("digits", binarize="dynamic")
    idx = torch.arange(200)
    a, b = data.train_batch(idx), data.train_batch(idx)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)
    # Bernoulli(intensity): the mean over many draws approaches the intensity
    mean = torch.stack([data.train_batch(idx) for _ in range(400)]).mean(0)
    assert (mean - data.train_x[idx]).abs().max() < 0.15


def test_static_and_none_binarization():
    static = load_dataset("digits", binarize="static")
    assert torch.equal(static.train_batch(torch.arange(50)), static.train_batch(torch.arange(50)))
    assert static.is_binary()
    none = load_dataset("digits", binarize="none")
    assert not none.is_binary()
    assert none.train_x.max() == 1.0 and none.train_x.min() == 0.0
    with pytest.raises(DataError, match="binarize"):
        load_dataset("digits", binarize="sometimes")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_reads_small_files(tmp_path, name):
    arrays = make_mnist_dir(tmp_path)
    data = load_dataset(name, tmp_path, binarize="none")
    images, labels = arrays["train"]
    assert data.train_x.shape == (20, 784) and data.test_x.shape == (10, 784)
    assert torch.allclose(data.train_x, torch.from_numpy(images.reshape(20, -1)).float() / 255)
    assert torch.equal(data.train_y, torch.from_numpy(labels).long())
    assert data.image_shape == (28, 28)


def test_idx_loader_accepts_uncompressed_and_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), gz=False)
    data = load_dataset("mnist", tmp_path)
    assert data.train_x.shape == (6, 784)


def test_idx_loader_missing_file_names_it(tmp_path):
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_idx_loader_corrupt_gzip_names_file(tmp_path):
    make_mnist_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*gzip"):
        load_dataset("mnist", tmp_path)


def test_idx_loader_bad_header_names_file(tmp_path):
    make_mnist_dir(tmp_path)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x00\x00garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_mnist_without_data_dir_says_what_to_pass():
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("mnist", "/nonexistent/dir")


def test_binarized_mnist_mat_and_amat(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 2, (30, 784)).astype(np.uint8)
    test = rng.integers(0, 2, (12, 784)).astype(np.uint8)
    scipy.io.savemat(tmp_path / "binarized_mnist_train.mat", {"X": train})
    np.savetxt(tmp_path / "binarized_mnist_test.amat", test, fmt="%d")
    data = load_dataset("binarized_mnist", tmp_path)
    assert torch.equal(data.train_x, torch.from_numpy(train).float())
    assert torch.equal(data.test_x, torch.from_numpy(test).float())
    assert data.binarize == "none" and data.is_binary()


def test_binarized_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="binarized_mnist_train"):
        load_dataset("binarized_mnist", tmp_path)
    scipy.io.savemat(tmp_path / "binarized_mnist_train.mat", {"Y": np.zeros((3, 784))})
    scipy.io.savemat(tmp_path / "binarized_mnist_test.mat", {"X": np.zeros((3, 784))})
    with pytest.raises(DataError, match="binarized_mnist_train.mat.*no variable 'X'"):
        load_dataset("binarized_mnist", tmp_path)
    scipy.io.savemat(tmp_path / "binarized_mnist_train.mat", {"X": np.zeros((3, 100))})
    with pytest.raises(DataError, match="784 columns"):
        load_dataset("binarized_mnist", tmp_path)
    (tmp_path / "binarized_mnist_train.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="binarized_mnist_train.mat: not a readable"):
        load_dataset("binarized_mnist", tmp_path)


def test_frey_face(tmp_path):
    rng = np.random.default_rng(0)
    ff = rng.integers(0, 256, (560, 1965)).astype(np.uint8)
    scipy.io.savemat(tmp_path / "frey_rawface.mat", {"ff": ff})
    data = load_dataset("frey_face", tmp_path)
    assert data.train_x.shape == (1765, 560) and data.test_x.shape == (200, 560)
    assert data.image_shape == (28, 20) and data.binarize == "none"
    assert torch.allclose(data.train_x[0], torch.from_numpy(ff[:, 0]).float() / 255)
    assert data.default_model == "gaussian_mlp"
    scipy.io.savemat(tmp_path / "frey_rawface.mat", {"ff": ff[:100]})
    with pytest.raises(DataError, match="560"):
        load_dataset("frey_face", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="the shared offline MNIST copy is not beside this checkout")
def test_real_mnist_from_shared_data():
    data = load_dataset("mnist", SHARED_DATA / "mnist", binarize="none")
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert data.train_y.bincount().tolist()[1] == 6742  # the published count of ones


@pytest.mark.skipif(not (SHARED_DATA / "binarized_mnist").is_dir(), reason="the shared binarized MNIST copy is not beside this checkout")
def test_real_binarized_mnist_from_shared_data():
    data = load_dataset("binarized_mnist", SHARED_DATA / "binarized_mnist")
    assert data.train_x.shape == (50000, 784) and data.test_x.shape == (10000, 784)
