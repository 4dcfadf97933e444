"""Compression methods, one module per family. Each module registers its configs, handlers and
compressed module classes with :mod:`tcomp_utils.registry` when it is imported, and
:func:`tcomp_utils.registry.discover` imports every module of this package: a new family is a
new file here, with no list to edit. Method modules import the core (adapters, budget, capture,
targeting, trainer, registry); the core never imports them. Methods share code only through
public names of public modules (e.g. :mod:`~tcomp_utils.methods.heads`), never each other's
private names (``tests/test_registry.py`` checks it)."""
