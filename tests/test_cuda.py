"""Checks that need a CUDA device (``benchmarks/gpu_suite.py`` runs them on a lent GPU); they skip without one."""

import pyro
import pytest
import torch

from pyro_vae import nuts_sampler, train
from pyro_vae.data import load_dataset
from pyro_vae.registry import get_guide, get_model
from pyro_vae.train import make_svi, train_epoch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def digits_svi(compile):
    pyro.set_rng_seed(0)
    data = load_dataset("digits", device="cuda")
    model = get_model("bernoulli_mlp")(data.data_dim, 2, (32,)).cuda()
    guide = get_guide("amortized")(model, data.num_train, (32,)).cuda()
    return data, model, make_svi(model, guide, 1e-3, compile=compile)


def test_compiled_svi_on_cuda_matches_eager():
    results = []
    for compile in (False, True):
        data, model, svi = digits_svi(compile)
        results.append([train_epoch(svi, data, 128, progress=False)[0] for _ in range(2)])
        assert compile is False or svi.graph is not None
    assert results[1] == pytest.approx(results[0], abs=1e-3)


def test_compiled_svi_epoch_reads_the_device_once(monkeypatch):
    """No host synchronisation per step: with reads every 10^9 steps, an
    epoch of the compiled step synchronises only for the final read."""
    data, _, svi = digits_svi(True)
    train_epoch(svi, data, 128, progress=False)  # records and compiles
    monkeypatch.setattr(train, "READ_EVERY", 10**9)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as caught:
            train_epoch(svi, data, 128, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 3, [str(w.message) for w in syncs]  # the last read, the ELBO's .item()


def test_compiled_nuts_on_cuda_samples_a_gaussian():
    mean = torch.tensor([[1.0, -2.0], [0.5, 3.0]], device="cuda")

    def log_density(z):
        return -0.5 * ((z - mean) ** 2).sum((-2, -1)), -(z - mean)

    draws, stats = nuts_sampler.sample(log_density, torch.zeros(2, 2, 2, device="cuda"), 200, 400, seed=0,
                                       compile=True)
    assert draws.is_cuda and not stats["diverging"].any()
    assert torch.allclose(draws.reshape(-1, 2, 2).mean(0), mean, atol=0.2)
