"""The variants this package registers with timm, and model creation with a clear unknown-name error."""

from __future__ import annotations

import timm
from torch import nn

# Family name -> the module (under repnext.models) that registers its variants.
FAMILIES = ("repnext", "recnext", "recnext_tsb", "repnext_u")


def models_by_family() -> dict[str, str]:
    """``{variant: family}`` for every registered variant, e.g. ``{'repnext_m1': 'repnext', ...}``."""
    return {name: family for family in FAMILIES for name in timm.models.list_models(module=family)}


def list_models() -> list[str]:
    """Names of every variant this package registers, sorted (e.g. ``repnext_m0``)."""
    return sorted(models_by_family())


def check_model_name(name: str, where: str = "model") -> str:
    """Return ``name`` if registered, else raise ``ValueError`` naming ``where`` and the choices."""
    available = list_models()
    if name not in available:
        raise ValueError(f"{where}: unknown model {name!r}; available: {', '.join(available)}")
    return name


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` restricted to this package's variants, with the available names on error."""
    return timm.create_model(check_model_name(name, "create_model"), **kwargs)
