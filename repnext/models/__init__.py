"""Model families; importing this package registers every variant with timm."""

from .repnext import RepNeXt

__all__ = ["RepNeXt"]
