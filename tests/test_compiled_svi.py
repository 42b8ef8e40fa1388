"""The compiled SVI step (pyro_vae.compiled_svi) against plain pyro.infer.SVI."""

import warnings

import pyro
import pytest
import torch

from pyro_vae.compiled_svi import CompiledSVI
from pyro_vae.fit import main
from pyro_vae.registry import get_guide, get_model, guide_names, model_names
from pyro_vae.train import make_svi

MODELS = [n for n in model_names() if get_model(n).__module__.startswith("pyro_vae.models.")]
GUIDES = [n for n in guide_names() if get_guide(n).__module__.startswith("pyro_vae.guides.")]


def train(model_name, guide_name, compile, steps=6):
    """Losses and final parameters of ``steps`` SVI steps from seed 0, the last on a smaller minibatch."""
    pyro.set_rng_seed(0)
    model = get_model(model_name)(data_dim=8, latent_dim=2, hidden_dims=(6,))
    guide = get_guide(guide_name)(model, 40, (6,))
    svi = make_svi(model, guide, 1e-2, compile=compile)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(40, 8, generator=g) < 0.4).float() if model_name == "bernoulli_mlp" else torch.randn(40, 8, generator=g)
    losses = []
    for step in range(steps):
        idx = torch.arange(16) + 8 * (step % 3) if step < steps - 1 else torch.arange(5)
        losses.append(float(svi.step(x[idx], idx, 40)))
    return losses, [p.detach().clone() for p in model.parameters()] + [p.detach().clone() for p in guide.parameters()], svi


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("guide_name", GUIDES)
def test_every_model_and_guide_records_or_says_why_not(model_name, guide_name):
    """The recorded step computes exactly SVI's losses and updates (same
    random draws), or the guide falls back to plain SVI with its reason."""
    eager_losses, eager_params, _ = train(model_name, guide_name, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, params, svi = train(model_name, guide_name, "record")
    reasons = [str(w.message) for w in caught if "SVI runs uncompiled" in str(w.message)]
    assert (svi.graph is None) == bool(reasons), reasons
    if guide_name == "meanfield":
        assert reasons and "sparse" in reasons[0]
    if guide_name == "amortized":
        assert svi.graph is not None  # the plain VAE is recorded
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(params, eager_params):
        assert torch.allclose(a, b, atol=1e-5)


def test_compiled_step_matches_plain_svi():
    """Through torch.compile (Inductor, eager torch's random numbers): the same
    losses and parameters as plain SVI, up to float rounding."""
    eager_losses, eager_params, _ = train("bernoulli_mlp", "amortized", False)
    losses, params, svi = train("bernoulli_mlp", "amortized", True)
    assert svi.graph is not None and not isinstance(svi.graph, torch.fx.GraphModule)
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(params, eager_params):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_failed_compilation_falls_back_to_plain_svi(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", no_compiler)
    eager_losses, _, _ = train("bernoulli_mlp", "amortized", False)
    with pytest.warns(UserWarning, match=r"SVI runs uncompiled: no C\+\+ compiler here"):
        losses, _, svi = train("bernoulli_mlp", "amortized", True)
    assert svi.graph is None and losses == eager_losses


def test_only_trace_elbo_is_recorded():
    pyro.clear_param_store()
    model = get_model("bernoulli_mlp")(data_dim=8, latent_dim=2, hidden_dims=(6,))
    svi = pyro.infer.SVI(model, get_guide("amortized")(model, 40, (6,)), pyro.optim.Adam({}),
                         pyro.infer.TraceMeanField_ELBO())
    with pytest.warns(UserWarning, match="only Trace_ELBO with one particle is recorded, not TraceMeanField_ELBO"):
        assert CompiledSVI(svi).fallback


def test_compile_flag_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--compile", "nonesuch", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--compile" in err and len(err.strip().splitlines()) == 1, err
