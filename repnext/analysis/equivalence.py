"""Check that a re-parameterized model computes the same function as its training form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..reparam import reparameterize


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, in place.

    Freshly initialised BatchNorms (mean 0, var 1, weight 1, bias 0) are identities, which would
    let a wrong fusion pass; these values are drawn so that a mistake shows and activations stay
    of order one through deep residual stacks.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            if module.affine:
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


@dataclass(frozen=True)
class Agreement:
    """Largest differences between two outputs: absolute, and relative to the largest reference value."""

    max_abs: float
    max_rel: float


def compare_outputs(reference: torch.Tensor, other: torch.Tensor) -> Agreement:
    diff = (reference - other).abs().max().item()
    return Agreement(max_abs=diff, max_rel=diff / max(reference.abs().max().item(), torch.finfo(reference.dtype).tiny))


@torch.no_grad()
def check_reparameterization(model: nn.Module, inputs: torch.Tensor, single_branch: bool = False) -> Agreement:
    """Fuse ``model`` (left untouched) and compare eval-mode outputs on ``inputs`` ``[B, C, H, W]``."""
    model = model.eval()
    fused = reparameterize(model, single_branch=single_branch)
    leftover = [name for name, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    if leftover:
        raise AssertionError(f"BatchNorm left after fusion: {leftover[0]}")
    return compare_outputs(model(inputs), fused(inputs))
