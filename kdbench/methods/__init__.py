"""Distillation methods: the Distiller interface and the registry by name."""
from kdbench.methods.base import (METHODS, REFERENCE_EPOCHS, Distiller, TrainContext,
                                  get_method, iter_method_names, load_plugins, register_method,
                                  register_variant)

# importing the modules registers the methods
from kdbench.methods import vanilla, kd, fitnet, at, dkd, tdd, cid, fcfd, e2kd  # noqa: E402,F401
# peer methods (methods_b)
from kdbench.methods import dist, ctkd, mlkd, crd, reviewkd, ofd  # noqa: E402,F401

# peer methods (mdistiller / RepDistiller set), one module each
from kdbench.methods import nst, pkt, rkd, sp, kdsvd, vid, cc, fsp, ft, ab  # noqa: E402,F401

__all__ = ["METHODS", "REFERENCE_EPOCHS", "Distiller", "TrainContext", "get_method",
           "iter_method_names", "load_plugins", "register_method", "register_variant"]
