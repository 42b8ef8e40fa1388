"""The compiled SVI step (pyro_vae.infer.svi.compiled) against plain pyro.infer.SVI."""

import warnings
from types import SimpleNamespace

import pyro
import pytest
import torch

from pyro_vae.runs.assembly import check_guide_samples_every_latent
from pyro_vae.plumbing.cli import UsageError
from pyro_vae.infer.svi.compiled import CompiledSVI
from pyro_vae.program.density import latent_layout
from pyro_vae.fit import main
from pyro_vae.plumbing.registry import get_guide, get_model, guide_names, model_names
from pyro_vae.infer.svi.train import make_svi

MODELS = [n for n in model_names() if get_model(n).__module__.startswith("pyro_vae.models.")]
GUIDES = [n for n in guide_names() if get_guide(n).__module__.startswith("pyro_vae.guides.")]


def pair(model_name, guide_name):
    """A model and a guide of the tests' sizes, or a skip where the library refuses the pair (a guide
    built for another model, or one that samples none of the model's latent sites: ``assembly.build``'s
    checks)."""
    model = get_model(model_name)(data_dim=8, latent_dim=2, hidden_dims=(6,))
    try:
        guide = get_guide(guide_name)(model, 40, (6,))
        x = data(model)
        check_guide_samples_every_latent(model, guide, SimpleNamespace(test_x=x[:2], num_train=len(x)))
    except (ValueError, UsageError) as error:
        pytest.skip(f"not a pair the library builds: {error}")
    return model, guide


def data(model):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(40, 8, generator=g) < 0.4).float() if model.binary_data else torch.randn(40, 8, generator=g)


def train(model_name, guide_name, compile, steps=6):
    """Losses and final parameters of ``steps`` SVI steps from seed 0, the last on a smaller minibatch."""
    pyro.set_rng_seed(0)
    model, guide = pair(model_name, guide_name)
    x = data(model)
    # a model with discrete latents trains by enumeration (the objective every discrete guide takes)
    svi = make_svi(model, guide, 1e-2, elbo="enum" if latent_layout(model, x[:2]).discrete else "trace",
                   compile=compile)
    losses = []
    for step in range(steps):
        idx = torch.arange(16) + 8 * (step % 3) if step < steps - 1 else torch.arange(5)
        losses.append(float(svi.step(x[idx], idx, 40)))
    return losses, [p.detach().clone() for p in model.parameters()] + [p.detach().clone() for p in guide.parameters()], svi


# What each built-in guide does under --compile: None, recorded (no warning at all); otherwise the one
# reason it falls back to plain SVI with. semi_amortized is recorded with its K inner Adam steps unrolled
# (docs/fit.md, "Compiled SVI"); meanfield's per-point rows have sparse gradients, which a graph would densify.
RECORDING_OUTCOME = {
    "amortized": None,
    "semi_amortized": None,
    "meanfield": "the guide's gradients are sparse (meanfield$$$loc.weight, meanfield$$$log_scale.weight)",
    "two_layer": None,
    "full_rank": None,
    "flow": None,  # Pyro's conditional autoregressive transforms record like any module
    # the discrete guides train by enumeration here, which CompiledSVI does not record
    **{name: "only Trace_ELBO with one particle is recorded, not EnumELBO"
       for name in ("categorical_amortized", "categorical_mlp", "categorical_meanfield", "enumerated")},
}


def test_every_built_in_guide_has_a_stated_outcome():
    assert set(GUIDES) == set(RECORDING_OUTCOME), "state what --compile does with each new guide"


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("guide_name", GUIDES)
def test_every_model_and_guide_records_or_says_why_not(model_name, guide_name):
    """The recorded step computes exactly SVI's losses and updates (same
    random draws), or the guide falls back to plain SVI with its own reason:
    exactly the outcome ``RECORDING_OUTCOME`` states, and no other warning."""
    eager_losses, eager_params, _ = train(model_name, guide_name, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, params, svi = train(model_name, guide_name, "record")
    messages = [str(w.message) for w in caught]
    expected = RECORDING_OUTCOME[guide_name]
    if expected is None:
        assert messages == [], messages  # no fallback, no "runs the Python" from the recorder either
        assert svi.fallback is None and isinstance(svi.graph, torch.fx.GraphModule)
    else:
        assert messages == [f"SVI runs uncompiled: {expected}"], messages
        assert svi.fallback == expected and svi.graph is None
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


def test_a_failed_compilation_runs_the_recording(monkeypatch):
    """Compiling fails (no C++ compiler): one warning naming the reason, and the uncompiled
    recording runs (recording.record), with plain SVI's losses."""
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    import torch._inductor  # noqa: F401  (the recorder compiles through standalone_compile where torch has it)

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(torch._inductor, "standalone_compile", no_compiler, raising=False)
    eager_losses, _, _ = train("bernoulli_mlp", "amortized", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, _, svi = train("bernoulli_mlp", "amortized", True)
    assert [str(w.message) for w in caught] == ["SVI runs uncompiled: compiling failed (no C++ compiler here)"]
    assert isinstance(svi.graph, torch.fx.GraphModule) and svi.fallback is None
    assert losses == pytest.approx(eager_losses, rel=1e-5)


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
