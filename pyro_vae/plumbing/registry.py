"""Name -> class registries for generative models and variational families.

A new model is one file in ``models/`` that decorates its class with
``@register_model("name")``: ``models/__init__.py`` imports every module of
its folder, and ``--model name`` then picks it on every command. Guides work
the same way.
A user's own module can register too: import it before calling the API
(or pass ``--import my_module`` on the command line).
"""

import importlib

MODELS = {}
GUIDES = {}


def _registrar(table, name):
    def decorate(cls):
        table[name] = cls
        cls.name = name
        return cls

    return decorate


def register_model(name):
    """Class decorator: make a model available as ``--model name``."""
    return _registrar(MODELS, name)


def register_guide(name):
    """Class decorator: make a guide available as ``--guide name``."""
    return _registrar(GUIDES, name)


def _load_builtins():
    # Importing the packages runs their @register_* decorators.
    importlib.import_module("pyro_vae.models")
    importlib.import_module("pyro_vae.guides")


def model_names():
    """The registered model names, sorted (built-ins and any a user module registered)."""
    _load_builtins()
    return sorted(MODELS)


def guide_names():
    """The registered guide names, sorted."""
    _load_builtins()
    return sorted(GUIDES)


def get_model(name):
    """The model class registered as ``name``; KeyError naming the choices otherwise."""
    _load_builtins()
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name]


def get_guide(name):
    """The guide class registered as ``name``; KeyError naming the choices otherwise."""
    _load_builtins()
    if name not in GUIDES:
        raise KeyError(f"unknown guide {name!r}; choose from {', '.join(sorted(GUIDES))}")
    return GUIDES[name]
