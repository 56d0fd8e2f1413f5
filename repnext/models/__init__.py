"""Model families; importing this package registers every variant with timm."""

from .metanext import MetaNeXt
from .recnext import RecNeXt, RecNeXtA
from .recnext_tsb import RecNeXtTSB
from .repnext import RepNeXt
from .repnext_u import RepNeXtU

__all__ = ["MetaNeXt", "RecNeXt", "RecNeXtA", "RecNeXtTSB", "RepNeXt", "RepNeXtU"]
