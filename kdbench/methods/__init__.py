"""Distillation methods: the Distiller interface and the registry by name.

Every module of this package is imported here, in name order, so that a new file
``kdbench/methods/<name>.py`` with ``@register_method("<name>")`` is found without
editing any list (docs/adding-a-method.md). Third-party packages register through the
``kdbench.methods`` entry-point group instead (:func:`load_plugins`).
"""
import importlib
import pkgutil

from kdbench.methods.base import (METHODS, REFERENCE_EPOCHS, Distiller, TrainContext,
                                  get_method, iter_method_names, load_plugins, register_method,
                                  register_variant)

#: the method modules found in this package (importing one registers its methods)
MODULES = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["METHODS", "MODULES", "REFERENCE_EPOCHS", "Distiller", "TrainContext", "get_method",
           "iter_method_names", "load_plugins", "register_method", "register_variant"]
