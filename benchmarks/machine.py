"""The processor a benchmark ran on, for the header every script in benchmarks/ prints.

A speed figure means nothing without its processor: the same code ran 1.3x or 1.6x a hand-written loop
depending on whether the CPU had AVX-512 (issue #37). So every script prints, before its rows, the CPU
model, its vector instructions (the ones ATen's kernels use, ``torch.backends.cpu.get_cpu_capability()``,
which ``ATEN_CPU_CAPABILITY`` can restrict, and the widest the CPU reports), torch's thread count and
the versions of torch and Pyro. The scripts that time NumPyro (``nuts_baselines.py``, ``nuts_job.py``) run
it in an interpreter of its own, which prints its jax and NumPyro versions beside its rows.

    from machine import machine_header   # a script in benchmarks/ run as python benchmarks/<script>.py
    print(machine_header())
"""

import os
import platform

import torch

# the widest vector extension the CPU reports, by its /proc/cpuinfo (lscpu) flag, widest first
ISA_FLAGS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"), ("asimd", "NEON"))


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:  # not Linux
        return ""


def _field(cpuinfo, names):
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


def cpu_model():
    """The CPU's model name ("AMD EPYC 9B14"), as lscpu shows it."""
    return _field(_cpuinfo(), ("model name", "Model name")) or platform.processor() or platform.machine()


def cpu_isa():
    """The widest vector extension the CPU reports ("AVX-512"), or None where it reports none known."""
    flags = set((_field(_cpuinfo(), ("flags", "Features")) or "").split())
    return next((name for flag, name in ISA_FLAGS if flag in flags), None)


def machine():
    """The processor and library versions as a dict (for a script's JSON record)."""
    info = {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "aten_isa": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__}
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        info["ATEN_CPU_CAPABILITY"] = os.environ["ATEN_CPU_CAPABILITY"]
    try:
        import pyro

        info["pyro"] = pyro.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_header():
    """One line naming the processor, torch's threads and the versions."""
    info = machine()
    line = (f"CPU: {info['cpu']} ({info['cores']} cores), vector ISA: {info['cpu_isa'] or 'unknown'}, "
            f"ATen kernels {info['aten_isa']}")
    if "ATEN_CPU_CAPABILITY" in info:
        line += f" (ATEN_CPU_CAPABILITY={info['ATEN_CPU_CAPABILITY']})"
    line += f"; {info['threads']} torch threads; torch {info['torch']}"
    if "pyro" in info:
        line += f", pyro {info['pyro']}"
    if "gpu" in info:
        line += f"; GPU: {info['gpu']}"
    return line
