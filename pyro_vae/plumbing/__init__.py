"""Plumbing every other part stands on, and that knows nothing of models or inference.

- ``registry``: name -> class registries (models, guides), the one registry type;
- ``cli``: command-line plumbing: one-line errors and exit statuses, argument types, ``--import``;
- ``files``: files written atomically (a temporary name, then a rename);
- ``checkpoint``: checkpoints of tensors only, loaded with ``weights_only=True``.
"""
