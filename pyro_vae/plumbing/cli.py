"""Shared command-line plumbing: one-line errors with exit status 2 (1 for
running out of memory), argument types, user modules."""

import argparse
import importlib
import re
import sys
from contextlib import contextmanager

import torch


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer_at_least(minimum, kind):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}")
        return value

    parse.__name__ = f"{kind.replace('-', '_')}_int"
    return parse


positive_int = _integer_at_least(1, "positive")
nonnegative_int = _integer_at_least(0, "non-negative")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def int_list(text):
    """'400' or '400,200' -> (400,) or (400, 200); '' -> () (no hidden layer)."""
    if text.strip() == "":
        return ()
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def names_in(text, choices):
    """A comma-separated list of names -> (the names as a tuple, those of them not in ``choices``)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    return names, [name for name in names if name not in choices]


def import_user_modules(modules):
    """Import modules that register models, guides or datasets of their own."""
    for name in modules or ():
        try:
            importlib.import_module(name)
        except Exception as error:
            raise UsageError(f"--import {name}: {type(error).__name__}: {error}") from None


def exit_with(prog, error, status=2):
    """Print ``prog: error: message`` on one line and exit."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


@contextmanager
def doing(what):
    """Name what the code inside is doing ("building model bernoulli_mlp ..."):
    an allocation failure inside carries the name, for :func:`report_out_of_memory`."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not hasattr(error, "activity"):  # the innermost name wins
            error.activity = what
        raise


def _is_out_of_memory(error):
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


@contextmanager
def report_out_of_memory(prog):
    """An allocation failure (CPU or CUDA) inside ends the process with one
    line naming what was being built and the size asked for, exit status 1."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        asked = re.search(r"allocate (?:memory: you tried to allocate )?(\d+(?:\.\d+)? ?[KMGT]?i?B|\d+ bytes)",
                          str(error))
        size = asked.group(1) if asked else ""
        if size.endswith(" bytes"):
            size = f"{int(size.split()[0]) / 2**30:.1f} GiB"
        size = f" ({size} asked for)" if size else ""
        where = getattr(error, "activity", "running")
        exit_with(prog, f"out of memory while {where}{size}; reduce the sizes (--latent-dim, --hidden-dims, "
                        f"--batch-size, --iwae-samples, ...) or use a larger device", status=1)
