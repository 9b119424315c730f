"""The model zoo: every model is a :class:`~kdbench.models.staged.StagedNet`.

``create_model(name, num_classes, **kwargs)`` builds a registered CIFAR architecture
(``list_models()``; any ``wrn_<depth>_<width>`` works too) or, for ``timm:<name>``, a timm
model split into stem / stages / head by :mod:`kdbench.models.timm_adapter` (timm is
imported only then). The families' modules document how each is split into stages.
"""
from __future__ import annotations

from typing import Callable

from kdbench.errors import UnknownChoiceError
from kdbench.models import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn
from kdbench.models.staged import Features, Head, StagedNet, set_model_builder
from kdbench.registry import Registry

__all__ = ["MODELS", "create_model", "list_models", "StagedNet", "Head", "Features"]

TIMM_PREFIX = "timm:"

MODELS: Registry[Callable[..., StagedNet]] = Registry("arch")
for _family in (resnet_cifar, resnet_imagenet, wrn, vgg, mobilenetv2, shufflenet):
    for _name, _factory in _family.ARCHS.items():
        MODELS.register(_name, _factory)


def list_models() -> list[str]:
    """The registered architecture names (besides these: ``wrn_<depth>_<width>`` and
    ``timm:<name>``)."""
    return MODELS.names()


def create_model(name: str, num_classes: int, **kwargs) -> StagedNet:
    """Build architecture ``name`` with ``num_classes`` outputs; extra keyword arguments
    go to the architecture (for ``timm:`` names, to ``timm.create_model``)."""
    if name.startswith(TIMM_PREFIX):
        # timm (2 s to import) loads only for a timm: arch
        from kdbench.models.timm_adapter import TimmStagedNet

        model = TimmStagedNet(name[len(TIMM_PREFIX):], num_classes, **kwargs)
    else:
        factory = MODELS.get(name) if name in MODELS else wrn.wrn_from_name(name)
        if factory is None:
            raise UnknownChoiceError(
                "arch", name, MODELS.names(),
                hint="Also: any wrn_<depth>_<width> (depth = 6n+4), and any timm model of a "
                     "supported family as timm:<name> (e.g. timm:resnet18, timm:efficientnet_b0)")
        model = factory(num_classes=num_classes, **kwargs)
    model.arch = name
    return model


def check_model_name(name: str) -> None:
    """Raise the unknown-arch error for a name ``create_model`` would reject, without
    building anything (timm names are checked against timm's registry: imports timm)."""
    if name.startswith(TIMM_PREFIX):
        # timm (2 s to import) loads only for a timm: arch
        from kdbench.models.timm_adapter import timm_family

        timm_family(name[len(TIMM_PREFIX):])
    elif name not in MODELS and wrn.wrn_from_name(name) is None:
        create_model(name, 2)  # raises the UnknownChoiceError with the choices


set_model_builder(create_model)  # StagedNet.probe_twin builds through the registry
