"""Shared command-line plumbing: one-line errors with exit status 2."""

import argparse
import importlib
import sys


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
