"""The variants this package registers with timm, and model creation with a clear unknown-name error."""

from __future__ import annotations

import timm
from torch import nn

_FAMILY_MODULES = ("repnext.models.repnext",)


def list_models() -> list[str]:
    """Names of every variant this package registers, sorted (e.g. ``repnext_m0``)."""
    names = set()
    for module in _FAMILY_MODULES:
        names.update(timm.models.list_models(module=module.rsplit(".", 1)[-1]))
    return sorted(names)


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` restricted to this package's variants, with the available names on error."""
    available = list_models()
    if name not in available:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available)}")
    return timm.create_model(name, **kwargs)
