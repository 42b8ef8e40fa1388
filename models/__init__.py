"""Generative models p(z) p(x | z). Importing this package registers them.

To add a model: write ``models/my_model.py`` with a subclass of
:class:`LatentVariableModel` decorated by ``@register_model("my_model")``,
and import it below.
"""

from . import bernoulli_mlp, gaussian_mlp, linear_gaussian  # noqa: F401  (registration)
from .base import LatentVariableModel

__all__ = ["LatentVariableModel"]
