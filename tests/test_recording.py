"""The one recorder (pyro_vae.infer.recording) and the Pyro internals compiled SVI relies on."""

import inspect
import warnings

import pyro.infer.trace_elbo as trace_elbo
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.infer import recording
from pyro_vae.infer.svi.compiled import PATCHED, loss_stays_on_device
from pyro_vae.plumbing.registry import get_guide, get_model


def affine(a, b):
    return (a + 2 * b, (a * b).sum())


def test_a_recording_computes_the_function_and_follows_captured_tensors():
    weight = torch.ones(3)
    recorded = recording.record(lambda a: (a * weight,), (torch.ones(3),), name="test")
    assert isinstance(recorded, torch.fx.GraphModule)
    weight.mul_(3)  # in place, as an optimizer moves a parameter: the recording reads it by reference
    assert torch.equal(recorded(torch.full((3,), 2.0))[0], torch.full((3,), 6.0))


@pytest.mark.parametrize("columns, copied", [(1, False), (2, True), (8, True), (9, False)])
def test_a_product_with_few_columns_takes_its_right_factor_column_major(columns, copied):
    """The recorder hands BLAS a 2-8 column right factor in column-major order (three times faster
    there); the recording still computes the same product and gradient."""
    weight = torch.randn(6, columns)

    def layer_gradient(upstream):  # the gradient in z of a layer h = z W^T: upstream (rows, 6) @ W (6, L)
        return (upstream @ weight, torch.addmm(torch.ones(columns), upstream, weight))

    upstream = torch.randn(5, 6)
    recorded = recording.record(layer_gradient, (upstream,), name="test")
    clones = [n for n in recorded.graph.nodes if n.target is torch.ops.aten.clone.default]
    assert len(clones) == (2 if copied else 0)
    for a, b in zip(recorded(upstream), layer_gradient(upstream)):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_recording_that_disagrees_falls_back_to_the_python_with_a_warning():
    calls = []

    def counted(a):  # the recording keeps the Python number of its first call as a constant
        calls.append(1)
        return (a * len(calls),)

    with pytest.warns(UserWarning, match="test runs the Python at every step.*disagrees with the Python"):
        chosen = recording.record(counted, (torch.ones(2),), name="test", check=(torch.ones(2),))
    assert chosen is counted


def test_a_program_that_cannot_be_recorded_falls_back_with_its_reason():
    def branchy(a):  # a branch on a value: make_fx refuses it
        return (a * 2,) if a.sum() > 0 else (a * -1,)

    with pytest.warns(UserWarning, match="test runs the Python at every step.*could not be recorded"):
        assert recording.record(branchy, (torch.ones(2),), name="test", check=(-torch.ones(2),)) is branchy


def test_compiled_matches_and_a_torch_without_standalone_compile_uses_torch_compile(monkeypatch):
    example = (torch.randn(4), torch.randn(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither path may fall back
        direct = recording.record(affine, example, name="test", compile=True, check=example)
        monkeypatch.delattr(torch._inductor, "standalone_compile")
        public = recording.record(affine, example, name="test", compile=True, check=example)
    for compiled in (direct, public):
        assert not isinstance(compiled, torch.fx.GraphModule)
        assert recording.outputs_agree(compiled(*example), affine(*example))


def test_a_compiled_graph_is_keyed_by_its_vector_width(monkeypatch):
    """Inductor's on-disk cache does not key on the vector ISA, so a graph generated under
    ATEN_CPU_CAPABILITY=avx2 was served to an unrestricted AVX-512 process and corrupted its heap:
    every compile sets cpp.simdlen, which is in the key, to the width Inductor picks in this process."""
    import os
    import subprocess
    import sys

    from torch._inductor.cpu_vec_isa import pick_vec_isa

    seen, standalone = [], torch._inductor.standalone_compile

    def spy(*args, **kwargs):
        seen.append(torch._inductor.config.cpp.simdlen)
        return standalone(*args, **kwargs)

    monkeypatch.setattr(torch._inductor, "standalone_compile", spy)
    example = (torch.randn(4), torch.randn(4))
    compiled = recording.record(affine, example, name="test", compile=True, check=example)
    assert seen == [pick_vec_isa().bit_width()] and not isinstance(compiled, torch.fx.GraphModule)
    native = recording._vector_bits()
    restricted = subprocess.run([sys.executable, "-c", "from pyro_vae.infer import recording; "
                                 "print(recording._vector_bits())"], capture_output=True, text=True, check=True,
                                env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}).stdout
    assert int(restricted) == min(native, 256)


def test_a_failed_compilation_keeps_the_recording(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch._inductor, "standalone_compile", no_compiler)
    with pytest.warns(UserWarning, match=r"test runs uncompiled: compiling failed \(no C\+\+ compiler here\)"):
        graph = recording.record(affine, (torch.ones(2), torch.ones(2)), name="test", compile=True)
    assert isinstance(graph, torch.fx.GraphModule)


def test_auto_compiles_from_the_measured_break_even():
    for device, threshold in recording.AUTO_COMPILE_ITERATIONS.items():
        assert recording.resolve_compile("auto", threshold, device)
        assert not recording.resolve_compile("auto", threshold - 1, device)
    assert recording.resolve_compile("auto", 4 * 2000, "cpu")  # fit's default NUTS job compiles
    assert not recording.resolve_compile("auto", 10**6, "mps")  # not measured there
    assert recording.resolve_compile(True, 1, "cpu") and not recording.resolve_compile(False, 10**6, "cuda")


def test_the_pyro_names_compiled_svi_patches_exist_and_trace_elbo_uses_them():
    """pyro-ppl is pinned below 1.10 for this: if a release renames or stops calling either name,
    the patch would silently do nothing (and every compiled step would fall back)."""
    source = inspect.getsource(Trace_ELBO)
    for name in PATCHED:
        assert callable(getattr(trace_elbo, name)), name
        assert f"{name}(" in source, name


def test_under_the_patch_a_recorded_loss_follows_its_inputs():
    """Unpatched, Trace_ELBO's loss is a Python float and a recording would keep it as a constant."""
    model = get_model("bernoulli_mlp")(data_dim=6, latent_dim=2, hidden_dims=(4,))
    guide = get_guide("amortized")(model, 10, (4,))
    elbo = Trace_ELBO()

    def loss(x):
        return (elbo.differentiable_loss(model, guide, x),)

    with loss_stays_on_device():
        graph = make_fx(loss)(torch.zeros(10, 6))
    torch.manual_seed(0)
    recorded = graph(torch.ones(10, 6))[0]
    torch.manual_seed(0)
    expected = loss(torch.ones(10, 6))[0]
    assert torch.allclose(recorded, expected)
    torch.manual_seed(0)
    assert not torch.allclose(graph(torch.zeros(10, 6))[0], recorded)
