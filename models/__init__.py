"""Generative models p(z) p(x | z). Importing this package registers them.

A new model is one file here: a subclass of :class:`LatentVariableModel`
decorated with ``@register_model("my_model")``. Every module of this folder
is imported below, so nothing else needs editing.
"""

import importlib
import pkgutil

from .base import LatentVariableModel

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LatentVariableModel"]
