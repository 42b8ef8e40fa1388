"""Variational families q(z | x). Importing this package registers them."""

from . import amortized  # noqa: F401  (registration)
