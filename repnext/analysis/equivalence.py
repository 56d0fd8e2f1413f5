"""Check that a re-parameterized model computes the same function as its training form."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..export import exported_program
from ..progress import bar
from ..registry import create_model
from ..reparam import has_single_branch_form, reparameterize
from ..tables import Table

# Largest relative error a fused model may show, per dtype (the project's exactness standard).
TOLERANCES = {"float64": 1e-9, "float32": 1e-4}


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


def fuse_without_batchnorm(model: nn.Module, single_branch: bool = False) -> nn.Module:
    """``reparameterize(model)`` (``model`` untouched), failing if any BatchNorm survived the fusion."""
    fused = reparameterize(model.eval(), single_branch=single_branch)
    leftover = [name for name, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    if leftover:
        raise AssertionError(f"BatchNorm left after fusion: {leftover[0]}")
    return fused


@torch.no_grad()
def check_reparameterization(model: nn.Module, inputs: torch.Tensor, single_branch: bool = False) -> Agreement:
    """Fuse ``model`` (left untouched) and compare eval-mode outputs on ``inputs`` ``[B, C, H, W]``."""
    fused = fuse_without_batchnorm(model, single_branch)
    return compare_outputs(model(inputs), fused(inputs))


def reparam_check(
    names: list[str],
    resolutions: list[tuple[int, int]] = ((224, 224),),
    dtypes: list[str] = ("float64", "float32"),
    tolerances: dict[str, float] | None = None,
    batch_size: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> Table:
    """Fused vs training form for each variant, fused form, dtype and ``(H, W)`` input size.

    Models get random BatchNorm statistics; inputs are ``[batch_size, 3, H, W]``. The ``single_branch``
    form is checked for the families that have one (RepNeXt). ``progress`` shows a bar on stderr.

    Columns: ``model, form, dtype, resolution, max_abs_err, max_rel_err, tolerance, passed``.
    """
    tolerances = {**TOLERANCES, **(tolerances or {})}
    rows = []
    for name, dtype_name in bar(itertools.product(names, dtypes), "verify", progress, len(names) * len(dtypes)):
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(seed)
        model = randomize_batchnorm(create_model(name), seed=seed).to(dtype).eval()
        inputs, expected = [], []
        for height, width in resolutions:  # the training form runs once per size, whatever the fused forms
            generator = torch.Generator().manual_seed(seed)
            inputs.append(torch.randn(batch_size, 3, height, width, generator=generator, dtype=torch.float64).to(dtype))
            with torch.no_grad():
                expected.append(model(inputs[-1]))
        for form in ("deploy", "single_branch") if has_single_branch_form(model) else ("deploy",):
            fused = fuse_without_batchnorm(model, single_branch=form == "single_branch")
            for (height, width), x, reference in zip(resolutions, inputs, expected, strict=True):
                with torch.no_grad():
                    agreement = compare_outputs(reference, fused(x))
                rows.append(dict(
                    model=name, form=form, dtype=dtype_name, resolution=f"{height}x{width}",
                    max_abs_err=agreement.max_abs, max_rel_err=agreement.max_rel,
                    tolerance=tolerances[dtype_name], passed=agreement.max_rel <= tolerances[dtype_name],
                ))  # fmt: skip
    columns = ["model", "form", "dtype", "resolution", "max_abs_err", "max_rel_err", "tolerance", "passed"]
    floats = dict(max_abs_err=".0e", max_rel_err=".0e", tolerance=".0e")
    return Table(columns, rows, floats=floats, sort_by=("model", "form", "dtype", "resolution"))


def exported_program_check(
    names: list[str],
    resolution: tuple[int, int] = (224, 224),
    batch_sizes: tuple[int, ...] = (1, 3),
    tolerance: float = TOLERANCES["float32"],
    seed: int = 0,
    progress: bool = False,
) -> Table:
    """The fused form of each variant (random weights and BatchNorm statistics) through ``torch.export``: traced on
    a ``[2, 3, H, W]`` example with the batch axis dynamic (H, W fixed), then run on a batch of each of
    ``batch_sizes`` against the module.

    Columns: ``model, resolution, batch_sizes, max_abs_err, max_rel_err, tolerance, passed, error`` (``error``:
    the exporter's message in one line where the export failed, else empty).
    """
    height, width = resolution
    rows = []
    for name in bar(names, "export", progress, len(names)):
        torch.manual_seed(seed)
        fused = fuse_without_batchnorm(randomize_batchnorm(create_model(name), seed=seed).eval())
        generator = torch.Generator().manual_seed(seed)
        example, *inputs = (torch.randn(n, 3, height, width, generator=generator) for n in (2, *batch_sizes))
        row = dict(model=name, resolution=f"{height}x{width}", batch_sizes=" ".join(map(str, batch_sizes)),
                   tolerance=tolerance)  # fmt: skip
        try:
            program = exported_program(fused, example).module()
        except Exception as error:  # the table, not a traceback, says which variant failed and why
            message = " ".join(str(error).split())
            rows.append({**row, "max_abs_err": None, "max_rel_err": None, "passed": False,
                         "error": f"{type(error).__name__}: {message[:300]}"})  # fmt: skip
            continue
        with torch.no_grad():
            agreements = [compare_outputs(fused(x), program(x)) for x in inputs]
        worst = Agreement(max(a.max_abs for a in agreements), max(a.max_rel for a in agreements))
        rows.append({**row, "max_abs_err": worst.max_abs, "max_rel_err": worst.max_rel,
                     "passed": worst.max_rel <= tolerance, "error": ""})  # fmt: skip
    columns = ["model", "resolution", "batch_sizes", "max_abs_err", "max_rel_err", "tolerance", "passed", "error"]
    floats = dict(max_abs_err=".0e", max_rel_err=".0e", tolerance=".0e")
    return Table(columns, rows, floats=floats, sort_by=("model",))
