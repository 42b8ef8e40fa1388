"""Variational families q(z | x). Importing this package registers them.

A new guide is one file here decorated with ``@register_guide("name")``;
every module of this folder is imported below.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
