"""Checks that need a CUDA device (``benchmarks/gpu_suite.py`` runs them on a lent GPU); they skip without one."""

import arviz as az
import pyro
import pytest
import torch

from pyro_vae.infer.svi import train
from pyro_vae.infer.mcmc import nuts
from pyro_vae.data import load_dataset
from pyro_vae.infer.mcmc.sampling import sample_latents
from pyro_vae.plumbing.registry import get_guide, get_model
from pyro_vae.infer.svi.train import make_svi, train_epoch

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

    draws, stats = nuts.sample(log_density, torch.zeros(2, 2, 2, device="cuda"), 200, 400, seed=0,
                                       compile=True)
    assert draws.is_cuda and not stats["diverging"].any()
    assert torch.allclose(draws.reshape(-1, 2, 2).mean(0), mean, atol=0.2)


def test_many_points_samplers_on_cuda():
    """A tree per point and ChEES-HMC, compiled, on the GPU, through the model's own program."""
    torch.manual_seed(0)
    model = get_model("bernoulli_mlp")(data_dim=8, latent_dim=2, hidden_dims=(16,)).cuda().eval()
    x = (torch.rand(20, 8, device="cuda") < 0.5).float()
    for options in ({"block_size": 1}, {"sampler": "chees"}):
        draws, stats, _ = sample_latents(model, x, chains=4, warmup=300, samples=200, seed=0, compile=True, **options)
        assert draws.is_cuda and draws.shape == (4, 200, 20, 2)
        assert torch.isfinite(draws).all() and not stats["diverging"].any()
        summary = az.summary(az.from_dict(posterior={"z": draws.cpu().numpy()}), kind="diagnostics")
        assert float(summary["r_hat"].max()) < 1.05, options
