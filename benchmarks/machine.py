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


# ATEN_CPU_CAPABILITY's values and the ISA names XLA's CPU backend takes for --xla_cpu_max_isa
XLA_ISA = {"default": None, "avx2": "AVX2", "avx512": "AVX512", "avx512_vnni": "AVX512", "avx512_bf16": "AVX512"}


def numpyro_env():
    """The environment for a NumPyro interpreter: JAX on the CPU, and restricted to the same vector ISA as
    ATen when ``ATEN_CPU_CAPABILITY`` restricts torch (``XLA_FLAGS=--xla_cpu_max_isa=AVX2``), so that an
    emulated AVX2 machine emulates it for both samplers."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    isa = XLA_ISA.get(os.environ.get("ATEN_CPU_CAPABILITY", "default"))
    if isa and "xla_cpu_max_isa" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}".strip()
    return env


def machine_header():
    """One line naming the processor, torch's threads and the versions."""
    info = machine()
    line = (f"CPU: {info['cpu']} ({info['cores']} cores), vector ISA: {info['cpu_isa'] or 'unknown'}, "
            f"ATen kernels {info['aten_isa']}")
    if "ATEN_CPU_CAPABILITY" in info:
        line += f" (ATEN_CPU_CAPABILITY={info['ATEN_CPU_CAPABILITY']}"
        xla = numpyro_env().get("XLA_FLAGS")
        line += f"; NumPyro's JAX with XLA_FLAGS={xla})" if xla else ")"
    line += f"; {info['threads']} torch threads; torch {info['torch']}"
    if "pyro" in info:
        line += f", pyro {info['pyro']}"
    if "gpu" in info:
        line += f"; GPU: {info['gpu']}"
    return line
