"""Effective receptive fields (ERF) of token mixers, blocks and stage outputs.

The ERF follows Luo et al. (2016, "Understanding the effective receptive field in deep CNNs") as
RepLKNet's ``erf/`` tooling computes it: the gradient of the centre output pixel, summed over the output
channels, with respect to the input, taken absolute, summed over the input channels and averaged over
``N`` inputs. Two differences from RepLKNet's script, both deliberate: it applies a ReLU to the centre
outputs and to the gradient (keeping only positive contributions), we take the plain sum and the absolute
gradient, as Luo et al. do; and the high-contribution area ratios are computed on the map as given (pass
``log_scaled(map)`` to get RepLKNet's ``log10(1 + x) / max`` variant).

For a linear module (a depthwise conv, ``RecConv2d``, ``ChunkConv`` without its BatchNorms in eval) the
gradient does not depend on the input, so its ERF is a property of the weights alone and one input
suffices. Stage outputs of a whole model are non-linear: they are averaged over seeded crops of
scikit-image's photographs (:func:`photo_inputs`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from ..datasets import photo_crops
from ..models.layers import dwconv
from ..models.recnext import RecConv2d
from ..models.repnext import ChunkConv
from ..plotting import use_style
from ..tables import Table

__all__ = [
    "THRESHOLDS",
    "AreaRatio",
    "Erf",
    "area_ratios",
    "erf_figure",
    "erf_map",
    "erf_table",
    "log_scaled",
    "mixer_erfs",
    "model_erfs",
    "photo_inputs",
    "same_depthwise",
    "stage_forward",
    "support_side",
]

# RepLKNet's high-contribution thresholds: the share of the total contribution a centred square must hold.
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def erf_map(fn: Callable[[Tensor], Tensor] | nn.Module, inputs: Tensor) -> Tensor:
    """The ERF of ``fn`` on ``inputs`` ``[N, C, H, W]``: a ``[H, W]`` float64 map.

    ``fn`` maps ``[N, C, H, W]`` to ``[N, C', h, w]``; for each input the centre output pixel
    ``(h // 2, w // 2)`` is summed over ``C'``, its gradient with respect to that input is taken
    absolute and summed over ``C``, and the ``N`` maps are averaged. Each sample's centre depends only
    on that sample (``fn`` must be in eval mode if it has BatchNorms), so one backward pass serves all.
    """
    if inputs.dim() != 4:
        raise ValueError(f"inputs: expected [N, C, H, W], got shape {list(inputs.shape)}")
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        if out.dim() != 4 or out.shape[0] != x.shape[0]:
            raise ValueError(f"fn must return [N, C, h, w] for N = {x.shape[0]}, got shape {list(out.shape)}")
        centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum()
        (grad,) = torch.autograd.grad(centre, x)
    return grad.abs().sum(dim=1).mean(dim=0).to(torch.float64)


def log_scaled(erf: Tensor) -> Tensor:
    """``log10(1 + erf / min_positive)`` scaled to a maximum of 1: the display scale.

    Dividing by the smallest positive value first makes the result independent of the map's overall
    scale (random and trained weights differ by orders of magnitude) while keeping zeros at zero.
    """
    positive = erf[erf > 0]
    if positive.numel() == 0:
        return torch.zeros_like(erf)
    scaled = torch.log10(1 + erf / positive.min())
    return scaled / scaled.max()


@dataclass(frozen=True)
class AreaRatio:
    """The smallest centred square holding ``threshold`` of the map's total: its side and shares of the input."""

    threshold: float
    side: int  # pixels (odd)
    side_ratio: float  # side / input side (the geometric mean of H and W for non-square inputs)
    area_ratio: float  # side**2 / (H * W), RepLKNet's "area ratio"


def area_ratios(erf: Tensor | np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> list[AreaRatio]:
    """For each threshold, the smallest centred ``(2i+1) x (2i+1)`` square whose sum is >= threshold x total.

    Squares are centred on ``(H // 2, W // 2)``, the pixel :func:`erf_map` differentiates, and grow
    until they meet the nearest border; a threshold no square reaches gets the full ``H x W`` input
    (side ``max(H, W)``, ratios 1). ``erf`` is a non-negative ``[H, W]`` map with a positive sum.
    """
    data = torch.as_tensor(erf, dtype=torch.float64)
    if data.dim() != 2:
        raise ValueError(f"erf: expected a [H, W] map, got shape {list(data.shape)}")
    if (data < 0).any() or not data.sum() > 0:
        raise ValueError("erf: expected non-negative values with a positive sum")
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"thresholds: each must be in (0, 1], got {t}")
    h, w = data.shape
    cy, cx = h // 2, w // 2
    total = data.sum().item()
    largest = min(cy, cx, h - 1 - cy, w - 1 - cx)
    # Cumulative share held by the centred square of half-width i, for i = 0 .. largest.
    shares = [data[cy - i : cy + i + 1, cx - i : cx + i + 1].sum().item() / total for i in range(largest + 1)]
    results = []
    for t in thresholds:
        i = next((i for i, share in enumerate(shares) if share >= t - 1e-12), None)
        if i is None:
            results.append(AreaRatio(t, max(h, w), 1.0, 1.0))
        else:
            side = 2 * i + 1
            results.append(AreaRatio(t, side, side / math.sqrt(h * w), side * side / (h * w)))
    return results


def support_side(erf: Tensor | np.ndarray, rel_tol: float = 1e-7) -> int:
    """Side of the smallest centred square containing every value above ``rel_tol`` x the maximum.

    The theoretical receptive field, as far as the input reaches: a k x k depthwise conv gives ``k``.
    """
    data = torch.as_tensor(erf, dtype=torch.float64)
    h, w = data.shape
    ys, xs = torch.nonzero(data > rel_tol * data.max(), as_tuple=True)
    if ys.numel() == 0:
        return 0
    half = max((ys - h // 2).abs().max().item(), (xs - w // 2).abs().max().item())
    return 2 * int(half) + 1


def stage_forward(model: nn.Module, stage: int) -> nn.Sequential:
    """The part of a MetaNeXt-layout model (``stem``, ``stages``) that ends at the output of ``stage`` (0-based)."""
    stages = getattr(model, "stages", None)
    if stages is None or not hasattr(model, "stem"):
        raise ValueError(f"{type(model).__name__} has no stem and stages")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(stages):
        raise ValueError(f"stage: expected an integer in [0, {len(stages) - 1}], got {stage!r}")
    return nn.Sequential(model.stem, *list(stages)[: stage + 1])


def photo_inputs(count: int, size: int = 224, seed: int = 0) -> Tensor:
    """``[count, 3, size, size]`` ImageNet-normalised crops of scikit-image's bundled photographs, seeded.

    The crops of ``builtin:photos``' validation region (:func:`repnext.datasets.photo_crops`), taken in
    turn from each of its eight photographs.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise ValueError(f"count: must be a positive integer, got {count!r}")
    per_class = -(-count // 8)
    crops = photo_crops("val", per_class, size=size, seed=seed)
    order = [label * per_class + j for j in range(per_class) for label in range(8)][:count]
    arrays = np.stack([np.asarray(crops.images[i], dtype=np.float32) / 255.0 for i in order])
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).reshape(1, 3, 1, 1)
    return (images - mean) / std


# --- experiments: single mixers and stage outputs -------------------------------------------------


@dataclass(frozen=True)
class Erf:
    """One measured ERF: ``map`` is ``[H, W]``; ``reach`` the claimed kernel reach where one is claimed."""

    name: str
    group: str  # "mixer" or "stage S"
    weights: str  # "random" or a checkpoint's name
    map: Tensor
    reach: int | None = None


def same_depthwise(channels: int, kernel_size: int) -> nn.Module:
    """A depthwise ``K x K`` conv keeping the input size, also for even ``K`` (padding one more after)."""
    if kernel_size % 2:
        return dwconv(channels, kernel_size, bias=False)
    before, after = (kernel_size - 1) // 2, kernel_size // 2
    return nn.Sequential(nn.ZeroPad2d((before, after, before, after)),
                         nn.Conv2d(channels, channels, kernel_size, groups=channels, bias=False))  # fmt: skip


def mixer_erfs(kernel_size: int = 5, levels: Sequence[int] = (0, 1, 2, 3, 4), channels: int = 8,
               size: int = 224, seed: int = 0) -> list[Erf]:  # fmt: skip
    """ERFs of single token mixers with random (default-init) weights on a ``size x size`` map of ``channels``.

    For each level ``l``: RecConv2d (``l = 0`` is the plain ``k x k`` depthwise conv RecNeXt uses there),
    and for ``l >= 1`` a depthwise conv of the claimed reach ``k * 2**l``; then RepNeXt's ChunkConv
    (identity, 3x3, 7x7, 1x11+11x1 chunks). All are linear, so the input (seeded noise) does not matter.
    """
    if channels % 4:
        raise ValueError(f"channels: ChunkConv needs a multiple of 4, got {channels}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, size, size, generator=generator)
    mixers: list[tuple[str, int | None, nn.Module]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for level in levels:
            reach = kernel_size * 2**level
            if level == 0:
                plain = dwconv(channels, kernel_size, bias=False)
                mixers.append((f"dw {kernel_size}x{kernel_size} (RecConv l=0)", reach, plain))
                continue
            mixers.append((f"RecConv l={level} ({kernel_size}x{kernel_size})", reach,
                           RecConv2d(channels, kernel_size, level=level)))  # fmt: skip
            mixers.append((f"dw {reach}x{reach}", reach, same_depthwise(channels, reach)))
        mixers.append(("ChunkConv (RepNeXt)", 11, ChunkConv(channels)))
    return [Erf(name, "mixer", "random", erf_map(m.eval(), x), reach) for name, reach, m in mixers]


def model_erfs(specs: Sequence[tuple[str, str | None]], stage: int = 3, size: int = 224, count: int = 8,
               seed: int = 0) -> list[Erf]:  # fmt: skip
    """ERFs of the output of ``stage`` for each ``(model name, weights)``, averaged over ``count`` photo crops.

    ``weights`` as :func:`repnext.analysis.features.load_weights` takes them (``None``: random init
    from ``seed``; a checkpoint path). The models run in eval mode (BatchNorm running statistics).
    """
    from .features import load_weights  # features imports heavy optional parts; keep it local

    inputs = photo_inputs(count, size, seed)
    results = []
    for name, weights in specs:
        model, described = load_weights(name, weights, seed=seed)
        model.requires_grad_(False)
        label = "random" if not described.trained else _weights_label(weights)
        results.append(Erf(name, f"stage {stage}", label, erf_map(stage_forward(model, stage), inputs)))
    return results


def _weights_label(weights: str | os.PathLike) -> str:
    """A checkpoint's run folder (``.../NAME/best.pth`` -> ``NAME``), else the weights spec itself."""
    path = Path(os.fspath(weights))
    return path.parent.name if path.is_file() and path.parent.name else os.fspath(weights)


def erf_table(erfs: Sequence[Erf], thresholds: Sequence[float] = THRESHOLDS) -> Table:
    """One row per ERF: claimed reach, measured support, and the side (pixels and fraction) per threshold."""
    rows = []
    for order, erf in enumerate(erfs):
        h, w = erf.map.shape
        row: dict[str, object] = dict(order=order, group=erf.group, name=erf.name, weights=erf.weights,
                                      input=f"{h}x{w}", reach=erf.reach, support=support_side(erf.map))  # fmt: skip
        for ratio in area_ratios(erf.map, thresholds):
            key = f"{round(ratio.threshold * 100)}"
            row[f"side_{key}"] = ratio.side
            row[f"ratio_{key}"] = ratio.side_ratio
        rows.append(row)
    keys = [f"{round(t * 100)}" for t in thresholds]
    columns = ["group", "name", "weights", "input", "reach", "support", *(f"side_{k}" for k in keys),
               *(f"ratio_{k}" for k in keys)]  # fmt: skip
    return Table(columns, rows, floats={f"ratio_{k}": ".3f" for k in keys}, sort_by=("order",))


def erf_figure(erfs: Sequence[Erf], columns: int = 4, crop: int | None = None):
    """A grid of log-scaled ERFs (:func:`log_scaled`), each titled with its name and 99% side; a Figure.

    ``crop`` shows only the centred ``crop x crop`` window (the full map when None).
    """
    from matplotlib.figure import Figure

    use_style()
    rows = -(-len(erfs) // columns)
    fig = Figure(figsize=(2.4 * columns, 2.5 * rows))
    for i, erf in enumerate(erfs):
        ax = fig.add_subplot(rows, columns, i + 1)
        data = log_scaled(erf.map)
        if crop is not None:
            h, w = data.shape
            top, left = max(h // 2 - crop // 2, 0), max(w // 2 - crop // 2, 0)
            data = data[top : top + crop, left : left + crop]
        ax.imshow(data.numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        side_99 = area_ratios(erf.map, (0.99,))[0].side
        weights = "" if erf.weights == "random" else f"\n{erf.weights}"
        ax.set_title(f"{erf.name}{weights}\n99%: {side_99} px", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig
