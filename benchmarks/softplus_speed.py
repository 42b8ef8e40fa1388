"""The softplus forms, ATen's, the fused one (``pyro_vae.nn._Softplus``) and the in-place one without
autograd (``pyro_vae.nn._softplus_no_grad``), in every mode they run in.

    python benchmarks/softplus_speed.py [--threads 1] [--repeats 15]
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/softplus_speed.py   # ATen's and Inductor's kernels on AVX2 only

``pyro_vae.nn.softplus`` uses, where autograd records it, the fused form, max(x, 0) + log(1 + e^-|x|)
with gradient sigmoid(x), on the processors of ``FUSED_SOFTPLUS_CPUS`` and ATen's ``F.softplus``
elsewhere; where it does not (evaluation), the same sum computed in place on one new buffer, on every
CPU. This is the measurement behind both choices. For the shapes of a hidden layer in training
(128 x 400), of the NUTS digits decoder (400 x 64) and of an IWAE chunk's logits (2000 x 784), each
form is timed in five modes: eager with autograd (forward and backward) and without, a make_fx
recording of forward and backward replayed, and that recording and a forward-only one compiled by Inductor (``pyro_vae.infer.recording.record``). The
candidates take turns call by call; medians over ``--repeats`` rounds, and the median of the per-round
ratios fused / ATen and in place / ATen (below 1: faster than ATen's). The in-place form has no
autograd and runs in the "eager, no grad" mode only.
"""

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from pyro_vae.infer.recording import record
from pyro_vae.nn import CPU_SOFTPLUS, _Softplus, _softplus_no_grad

from machine import machine_header

SHAPES = [(128, 400), (400, 64), (2000, 784)]
FORMS = {"aten": F.softplus, "fused": _Softplus.apply}
IN_PLACE_MODE = "eager, no grad"  # the one mode of the in-place form


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
    print("| shape | mode | ATen ms | fused ms | fused / ATen | in place ms | in place / ATen |\n"
          "|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for shape in SHAPES:
        x = 3 * torch.randn(*shape)
        xg = x.clone().requires_grad_(True)
        modes = {name: candidates(form, x, xg) for name, form in FORMS.items()}
        calls = max(3, 10**6 // x.numel())
        modes["in place"] = {IN_PLACE_MODE: (_softplus_no_grad, x)}
        times = {(name, mode): [] for name in modes for mode in modes[name]}
        for (name, mode) in times:
            per_call_ms(*modes[name][mode], 2)  # warm-up
        for _ in range(args.repeats):
            for (name, mode), runs in times.items():
                runs.append(per_call_ms(*modes[name][mode], calls))
        for mode in modes["aten"]:
            aten, fused = times["aten", mode], times["fused", mode]
            ratio = statistics.median(f / a for a, f in zip(aten, fused))
            in_place = ""
            if mode == IN_PLACE_MODE:
                runs = times["in place", mode]
                in_place = (f"{statistics.median(runs):.3f} | "
                            f"{statistics.median(i / a for a, i in zip(aten, runs)):.2f}")
            print(f"| {shape[0]} x {shape[1]} | {mode} | {statistics.median(aten):.3f} | "
                  f"{statistics.median(fused):.3f} | {ratio:.2f} | {in_place or ' |'} |", flush=True)


if __name__ == "__main__":
    main()
