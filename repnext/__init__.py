"""Reproducible artifacts for RepNeXt and RecNeXt: models, re-parameterization, analysis."""

from . import models
from .checkpoint import CheckpointError, load_checkpoint
from .registry import create_model, list_models
from .reparam import reparameterize

__version__ = "0.1.0"

__all__ = ["CheckpointError", "create_model", "list_models", "load_checkpoint", "models", "reparameterize"]
