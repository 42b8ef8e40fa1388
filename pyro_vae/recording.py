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
"""

import contextlib
import logging
import warnings

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_map

# compile="auto" for the samplers compiles on a GPU from this many chain-iterations on. On CPU it does not
# compile: on 2 cores a tiny decoder (2-32-64) gained (21 s to compile, 16 ms an iteration saved), but the
# default digits job (2-400-64, 4 x 100 points) ran slower compiled, 124 s with a warm Inductor cache and
# 146 s cold against 100 s recorded (benchmarks/nuts_job.py, docs/nuts.md): there matmuls dominate
AUTO_COMPILE_ITERATIONS = 1000


def resolve_compile(compile, chain_iterations, device):
    """``compile`` (True, False or "auto") as True or False for a sampler run of ``chain_iterations``
    in all on ``device``: "auto" compiles on CUDA from ``AUTO_COMPILE_ITERATIONS`` on, never on CPU."""
    if compile != "auto":
        return bool(compile)
    return torch.device(device).type == "cuda" and chain_iterations >= AUTO_COMPILE_ITERATIONS


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
        graph = make_fx(function)(*_distinct(example))
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


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _compile(graph, example):
    """``graph`` compiled by Inductor for the shapes of ``example``, the
    tensors it reads by reference lifted to inputs and passed at every call:
    so they stay by reference, and Inductor's on-disk cache, which cannot key
    on captured tensors, serves a second process."""
    with _quiet_cuda_probe():
        import torch._inductor.config  # here, not at the top: importing Inductor costs a second

    with _quiet_cuda_probe(), torch._inductor.config.patch(fallback_random=True):
        standalone = getattr(torch._inductor, "standalone_compile", None)
        if standalone is None:  # a torch release without it: the public entry point, guards and all
            compiled = torch.compile(graph, dynamic=False, fullgraph=True)
            compiled(*example)
            return compiled
        module, constants = _lift_captured_tensors(graph)
        compiled = standalone(module, [*example, *constants], dynamic_shapes="from_example_inputs")
    return lambda *args: compiled(*args, *constants)


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
