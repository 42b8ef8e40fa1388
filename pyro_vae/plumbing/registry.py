"""Name -> object registries: generative models and variational families here, one ``Registry`` type
for every table a name picks from (datasets, objectives and closed-form updates too).

A new model is one file in ``models/`` that decorates its class with
``@register_model("name")``: ``models/__init__.py`` imports every module of
its folder, and ``--model name`` then picks it on every command. Guides work
the same way.
A user's own module can register too: import it before calling the API
(or pass ``--import my_module`` on the command line).
"""

import importlib

class Registry(dict):
    """A name -> object table of one kind, filled by its :meth:`register` decorator: the one registry
    type behind ``--model`` and ``--guide`` (classes, which learn their ``name``), ``--dataset``
    (loaders), ``--elbo`` (objectives) and EM's closed-form updates (keyed by model class)."""

    def __init__(self, kind, entries=(), names_its_entries=False):
        super().__init__(entries)
        self.kind, self.names_its_entries = kind, names_its_entries

    def register(self, key):
        """Decorator: ``self[key] = obj`` (and ``obj.name = key`` where entries carry their name)."""

        def decorate(obj):
            self[key] = obj
            if self.names_its_entries:
                obj.name = key
            return obj

        return decorate

    def lookup(self, key):
        """``self[key]``; a KeyError naming the choices otherwise."""
        if key not in self:
            raise KeyError(f"unknown {self.kind} {key!r}; choose from {', '.join(sorted(map(str, self)))}")
        return self[key]


MODELS = Registry("model", names_its_entries=True)
GUIDES = Registry("guide", names_its_entries=True)


def register_model(name):
    """Class decorator: make a model available as ``--model name``."""
    return MODELS.register(name)


def register_guide(name):
    """Class decorator: make a guide available as ``--guide name``."""
    return GUIDES.register(name)


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
    return MODELS.lookup(name)


def get_guide(name):
    """The guide class registered as ``name``; KeyError naming the choices otherwise."""
    _load_builtins()
    return GUIDES.lookup(name)
