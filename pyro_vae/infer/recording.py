"""Record a tensor function once, compile it, check it, or fall back: the one recorder.

NUTS's leaf steps and tree merge, ChEES's and AIS's trajectories and SVI's
step all run the same tensor operations at every call with the same shapes,
under Python (Pyro's tracing, the tree's bookkeeping) that costs more than
the operations themselves on small models. :func:`record` replaces such a
function by

1. a graph of the ATen operations it runs at ``example`` (``make_fx``:
   autograd's operations included, the Python that produced them gone),
2. with ``compile``, that graph compiled by Inductor (fused kernels),

each checked (``agrees``) before it is used. A recording keeps the one path
the Python took at ``example``; where recording fails or disagrees the
Python runs, where compiling fails or disagrees the uncompiled graph runs,
either way after a one-line warning naming the caller.

Tensors the function reads without taking them as inputs (a decoder's
weights, a data buffer) enter the graph by reference: changed in place, the
recording sees the new values, so one recording serves every call with the
same shapes (Monte Carlo EM's E-steps, SVI's optimizer updates).

Private torch API relied on, and why:

- ``torch._inductor.standalone_compile`` compiles an FX graph directly,
  without ``torch.compile``'s guards and wrappers around each call (they
  cost 40 us of the 110 us a compiled NUTS leapfrog call took) and with
  Inductor's on-disk cache across processes. Where a torch release lacks
  it, ``torch.compile(graph, fullgraph=True)`` is used instead.
- ``torch._inductor.config.fallback_random``: a compiled graph draws its
  random numbers as eager torch does, so a compiled SVI step can be checked
  against plain SVI at the same seed.
- ``torch._inductor.config.cpp.vec_isa_ok``: trust the CPU's reported
  vector instructions instead of test-compiling each (6 s on an empty cache).
- ``torch._inductor.config.cpp.simdlen``, set to the vector width Inductor
  picks anyway: it puts the width into the on-disk cache's key, which
  otherwise served a graph generated for AVX2 to an AVX-512 process (heap
  corruption; ``_vector_bits``).
"""

import contextlib
import logging
import warnings

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_map

# compile="auto" for the samplers compiles from this many chain-iterations on, by device type. On 2 CPU
# cores the default digits job (2-400-64, 4 chains x 100 points x 2,000 iterations, about 18 leapfrog
# steps an iteration) compiles in about 10 s with an empty Inductor cache, then takes 0.6 ms a leapfrog
# step against 1.4 ms recorded: it pays back after about 700 iterations of 4 chains; the whole job took
# 51 s compiled against 88 s recorded (benchmarks/nuts_job.py, docs/nuts.md)
AUTO_COMPILE_ITERATIONS = {"cuda": 1000, "cpu": 4000}


def resolve_compile(compile, chain_iterations, device):
    """``compile`` (True, False or "auto") as True or False for a sampler run of ``chain_iterations``
    in all on ``device``: "auto" compiles from ``AUTO_COMPILE_ITERATIONS[device type]`` on."""
    if compile != "auto":
        return bool(compile)
    threshold = AUTO_COMPILE_ITERATIONS.get(torch.device(device).type)
    return threshold is not None and chain_iterations >= threshold


def outputs_agree(outputs, expected, rtol=1e-4, atol=1e-4):
    """Every tensor of ``outputs`` close to its counterpart in ``expected`` (NaN equal to NaN)."""
    return all(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True) for a, b in zip(outputs, expected))


def record(function, example, *, name, check=None, agrees=None, compile=False, stacklevel=3):
    """``function`` recorded at the inputs ``example`` (a tuple of tensors)
    and, with ``compile``, compiled; see the module docstring.

    ``agrees(candidate)`` says whether a recorded or compiled ``candidate``
    computes what ``function`` does; by default it compares their outputs at
    the inputs ``check`` (None: ``function`` is pure tensor code with no
    branch on values, and the recording is trusted). ``name`` names the
    caller in the warnings. Returns the compiled graph, the recording, or
    ``function`` itself."""
    if agrees is None:
        agrees = (lambda candidate: True) if check is None else (
            lambda candidate: outputs_agree(candidate(*check), function(*check)))
    try:
        graph = _skinny_factors_column_major(make_fx(function)(*_distinct(example)))
        ok, reason = agrees(graph), "the recording disagrees with the Python"
    except Exception as error:  # noqa: BLE001 -- a model's own error reappears in the Python
        ok, reason = False, _first_line(error)
    if not ok:
        warnings.warn(f"{name} runs the Python at every step (slower): it could not be recorded ({reason})",
                      stacklevel=stacklevel)
        return function
    if not compile:
        return graph
    try:
        compiled = _compile(graph, _distinct(example))
        if agrees(compiled):
            return compiled
        reason = "the compiled graph disagrees with the recording"
    except Exception as error:  # noqa: BLE001 -- no compiler, an unsupported operation: the recording still runs
        reason = _first_line(error)
    warnings.warn(f"{name} runs uncompiled: compiling failed ({reason})", stacklevel=stacklevel)
    return graph


def _skinny_factors_column_major(graph):
    """``graph`` with the right factor of every matrix product that has 2 to 8
    columns copied to column-major order first.

    Such products are the gradient in z of a decoder's first layer (the
    upstream gradient (rows, hidden) times the weight (hidden, latent)), and
    BLAS's sgemm takes a row-major factor of 2 to 8 columns three times
    slower than the same factor column-major: 95 us against 30 us for (400,
    400) @ (400, 2) on 2 cores, about a sixth of the digits decoder's
    compiled log density and gradient. The copy is of hidden x latent numbers."""
    aten = torch.ops.aten
    for node in [n for n in graph.graph.nodes if n.target in (aten.mm.default, aten.addmm.default)]:
        factor = node.args[-1]
        value = factor.meta.get("val") if isinstance(factor, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor) or not 2 <= value.shape[-1] <= 8 or value.stride(-1) != 1:
            continue
        with graph.graph.inserting_before(node):
            transposed = graph.graph.call_function(aten.t.default, (factor,))
            copied = graph.graph.call_function(aten.clone.default, (transposed,),
                                               {"memory_format": torch.contiguous_format})
            node.args = (*node.args[:-1], graph.graph.call_function(aten.t.default, (copied,)))
    graph.recompile()
    return graph


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _compile(graph, example):
    """``graph`` compiled by Inductor for the shapes of ``example``, the
    tensors it reads by reference lifted to inputs and passed at every call:
    so they stay by reference, and Inductor's on-disk cache, which cannot key
    on captured tensors, serves a second process."""
    with _quiet_cuda_probe():
        import torch._inductor.config  # here, not at the top: importing Inductor costs a second

    # cpp.vec_isa_ok: the vector instructions are those the CPU reports, without first compiling a test
    # program for each (six C++ builds, 6 s of a first compile on the 2-core machine). cpp.simdlen is a second
    # patch because _vector_bits must run under the first: without vec_isa_ok it would make those test builds
    with _quiet_cuda_probe(), torch._inductor.config.patch({"fallback_random": True, "cpp.vec_isa_ok": True}), \
            torch._inductor.config.patch({"cpp.simdlen": _vector_bits()}):
        standalone = getattr(torch._inductor, "standalone_compile", None)
        if standalone is None:  # a torch release without it: the public entry point, guards and all
            compiled = torch.compile(graph, dynamic=False, fullgraph=True)
            compiled(*example)
            return compiled
        module, constants = _lift_captured_tensors(graph)
        compiled = standalone(module, [*example, *constants], dynamic_shapes="from_example_inputs")
    return lambda *args: compiled(*args, *constants)


def _vector_bits():
    """The width in bits of the vector ISA Inductor generates code for in this process (512 for AVX-512, 256
    for AVX2 or under ``ATEN_CPU_CAPABILITY=avx2``, 0 for none), to be set as ``cpp.simdlen``: it then
    enters the key of Inductor's on-disk graph cache, which the ISA alone does not. Without it a graph
    generated for AVX2 (8 floats a vector) was served to an AVX-512 process, whose build of the same
    source steps 16 floats at a time: heap corruption ("invalid fastbin entry") in the first NUTS
    transition, found by running ``benchmarks/nuts_speed.py`` restricted to AVX2, then unrestricted."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return pick_vec_isa().bit_width()


def _lift_captured_tensors(graph):
    """A copy of ``graph`` whose captured tensors (``get_attr`` nodes) are
    trailing placeholders, and those tensors."""
    lifted = torch.fx.Graph()
    lifted.output(lifted.graph_copy(graph.graph, {}))
    placeholders = [node for node in lifted.nodes if node.op == "placeholder"]
    constants = []
    for node in [node for node in lifted.nodes if node.op == "get_attr"]:
        value = getattr(graph, node.target)
        if not isinstance(value, torch.Tensor):
            continue
        with lifted.inserting_after(placeholders[-1]):
            placeholders.append(lifted.placeholder(f"captured_{len(constants)}"))
        placeholders[-1].meta = dict(node.meta)
        node.replace_all_uses_with(placeholders[-1])
        lifted.erase_node(node)
        constants.append(value)
    return torch.fx.GraphModule(graph, lifted), constants


@contextlib.contextmanager
def _quiet_cuda_probe():
    """Inductor's C++ toolchain probe logs "No CUDA runtime is found, using
    CUDA_HOME=..." on a CPU-only machine with a CUDA toolkit: not an error,
    but a newcomer reads it as one."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _distinct(example):
    """``example`` with every tensor that appears twice copied: the recorder
    would take two arguments that are one tensor for one input."""
    seen = set()

    def fresh(value):
        if isinstance(value, torch.Tensor) and id(value) in seen:
            return value.clone()
        seen.add(id(value))
        return value

    return tree_map(fresh, example)
