"""The two softplus forms, ATen's and the fused one (``pyro_vae.nn._Softplus``), in every mode they run in.

    python benchmarks/softplus_speed.py [--threads 1] [--repeats 15]
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/softplus_speed.py   # ATen's and Inductor's kernels on AVX2 only

``pyro_vae.nn.softplus`` uses the fused form, max(x, 0) + log(1 + e^-|x|) with gradient sigmoid(x), on
the processors of ``FUSED_SOFTPLUS_CPUS`` and ATen's ``F.softplus`` elsewhere; this is the measurement
behind that set. For the shapes of a hidden layer in training (128 x 400), of the NUTS digits decoder
(400 x 64) and of an IWAE chunk's logits (2000 x 784), each form is timed in five modes: eager with
autograd (forward and backward) and without, a make_fx recording of forward and backward replayed, and
that recording and a forward-only one compiled by Inductor (``pyro_vae.infer.recording.record``). The
candidates take turns call by call; medians over ``--repeats`` rounds, and the median of the per-round
ratios fused / ATen (below 1: the fused form is faster).
"""

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from pyro_vae.infer.recording import record
from pyro_vae.nn import CPU_SOFTPLUS, _Softplus

from machine import machine_header

SHAPES = [(128, 400), (400, 64), (2000, 784)]
FORMS = {"aten": F.softplus, "fused": _Softplus.apply}


def candidates(form, x, xg):
    """The five modes of one form, each a (function, argument) pair."""

    def eager_grad(v):  # the value too: without it Inductor would drop the forward
        value = form(v)
        return value, torch.autograd.grad(value.sum(), v)[0]

    def eager(v):
        with torch.no_grad():
            return form(v)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"eager, autograd": (eager_grad, xg), "eager, no grad": (eager, x),
                "recorded, fwd + bwd": (record(eager_grad, (xg,), name="softplus"), xg),
                "compiled, fwd + bwd": (record(eager_grad, (xg,), name="softplus", compile=True), xg),
                "compiled, fwd": (record(lambda v: form(v), (x,), name="softplus", compile=True), x)}


def per_call_ms(function, argument, calls):
    start = time.perf_counter()
    for _ in range(calls):
        function(argument)
    return (time.perf_counter() - start) / calls * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_header(), flush=True)
    print(f"pyro_vae.nn.softplus uses the {CPU_SOFTPLUS} form on this CPU\n")
    print("| shape | mode | ATen ms | fused ms | fused / ATen |\n|---|---|---|---|---|")
    torch.manual_seed(0)
    for shape in SHAPES:
        x = 3 * torch.randn(*shape)
        xg = x.clone().requires_grad_(True)
        modes = {name: candidates(form, x, xg) for name, form in FORMS.items()}
        calls = max(3, 10**6 // x.numel())
        times = {(name, mode): [] for name in FORMS for mode in modes["aten"]}
        for (name, mode) in times:
            per_call_ms(*modes[name][mode], 2)  # warm-up
        for _ in range(args.repeats):
            for (name, mode), runs in times.items():
                runs.append(per_call_ms(*modes[name][mode], calls))
        for mode in modes["aten"]:
            aten, fused = times["aten", mode], times["fused", mode]
            ratio = statistics.median(f / a for a, f in zip(aten, fused))
            print(f"| {shape[0]} x {shape[1]} | {mode} | {statistics.median(aten):.3f} | "
                  f"{statistics.median(fused):.3f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
