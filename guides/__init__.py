"""Variational families q(z | x). Importing this package registers them."""

from . import amortized, meanfield  # noqa: F401  (registration)
