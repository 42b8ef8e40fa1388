"""Variational families q(z | x). Importing this package registers them."""

from . import amortized, meanfield, nuts  # noqa: F401  (registration)
