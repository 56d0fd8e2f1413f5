"""Structural re-parameterization: one implementation shared by every model and the tutorial.

The functions here are pure: they take kernels (``weight`` of shape ``[out, in / groups, kh, kw]``
and an optional ``bias`` of shape ``[out]``) or BatchNorm modules and return new tensors, never
modifying their inputs. Models call them from their ``fuse()`` methods, and
:func:`reparameterize` walks a model and replaces every fusable module by its inference form.

Convention: convolutions are cross-correlations with zero padding, as in ``torch.nn.Conv2d``,
and a kernel of odd size ``k`` is applied with padding ``k // 2`` so that kernels of different
sizes share one centre.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BorderBiasConv2d",
    "absorb_activated_shortcut",
    "avg_pool_kernel",
    "bn_scale_shift",
    "bn_to_conv",
    "conv_from_kernel",
    "conv_to_linear",
    "dilate_kernel",
    "dirac_kernel",
    "fold_affine_after",
    "fold_affine_before",
    "fold_output_affine",
    "fuse_1x1_kxk",
    "fuse_bn_conv",
    "fuse_bn_linear",
    "fuse_conv_bn",
    "fuse_kxk_1x1",
    "has_single_branch_form",
    "linear_from_weight",
    "linear_to_conv",
    "merge_chunks",
    "merge_copies",
    "merge_parallel",
    "merge_separable",
    "pad_kernel",
    "reparameterize",
    "same_padding",
]

Bias = Tensor | None


def same_padding(kernel_size: Sequence[int], dilation: Sequence[int] = (1, 1)) -> tuple[int, int]:
    """Padding that keeps a stride-1 output the size of its input, derived from an odd kernel size."""
    pads = []
    for k, d in zip(kernel_size, dilation, strict=True):
        extent = d * (k - 1) + 1
        if extent % 2 == 0:
            raise ValueError(f"kernel extent {extent} is even: it has no centre, so no 'same' padding")
        pads.append(extent // 2)
    return pads[0], pads[1]


def _portable_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` with the same bits on every CPU: torch's float32 sqrt runs MKL's vector math, whose last bit
    depends on the instruction set; in float64, rounded once to ``x.dtype``, that bit almost never shows."""
    if x.dtype == torch.float64 or x.device.type == "mps":  # MPS has no float64
        return torch.sqrt(x)
    return torch.sqrt(x.double()).to(x.dtype)


def bn_scale_shift(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """Per-channel ``scale`` and ``shift`` ([C] each) with ``bn(x) == scale * x + shift`` in eval mode."""
    std = _portable_sqrt(bn.running_var + bn.eps)
    weight = bn.weight if bn.affine else torch.ones_like(std)
    bias = bn.bias if bn.affine else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean * scale


def fold_affine_after(weight: Tensor, bias: Bias, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Fold a per-output-channel affine ``scale * y + shift`` applied after a conv or linear layer."""
    view = (-1,) + (1,) * (weight.dim() - 1)
    fused_bias = shift if bias is None else scale * bias + shift
    return weight * scale.reshape(view), fused_bias


def fold_affine_before(scale: Tensor, shift: Tensor, weight: Tensor, bias: Bias) -> tuple[Tensor, Tensor]:
    """Fold a per-input-channel affine applied before a dense (groups=1) linear map or unpadded conv.

    Exact for a Linear layer or a conv without padding; with zero padding the padded border
    would see ``shift`` where the original saw zeros, so callers must not use it there.
    """
    view = (1, -1) + (1,) * (weight.dim() - 2)
    fused_weight = weight * scale.reshape(view)
    offset = (weight * shift.reshape(view)).flatten(1).sum(1)
    return fused_weight, offset if bias is None else bias + offset


def fuse_conv_bn(weight: Tensor, bias: Bias, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """Conv (or Linear) followed by BatchNorm -> one layer. ``weight``: [out, ...], ``bn``: out channels."""
    return fold_affine_after(weight, bias, *bn_scale_shift(bn))


def fuse_bn_conv(bn: _BatchNorm, weight: Tensor, bias: Bias) -> tuple[Tensor, Tensor]:
    """BatchNorm followed by a dense unpadded conv (``[out, in, kh, kw]``) -> one conv."""
    return fold_affine_before(*bn_scale_shift(bn), weight, bias)


def fuse_bn_linear(bn: _BatchNorm, weight: Tensor, bias: Bias) -> tuple[Tensor, Tensor]:
    """BatchNorm1d followed by Linear (``weight``: [out, in]) -> one Linear."""
    return fold_affine_before(*bn_scale_shift(bn), weight, bias)


def dirac_kernel(channels: int, kernel_size: int = 1, groups: int = 1, like: Tensor | None = None) -> Tensor:
    """Identity as a conv kernel, ``[channels, channels // groups, k, k]``, one at each centre tap."""
    in_per_group = channels // groups
    kernel = torch.zeros(
        channels,
        in_per_group,
        kernel_size,
        kernel_size,
        dtype=like.dtype if like is not None else None,
        device=like.device if like is not None else None,
    )
    centre = kernel_size // 2
    kernel[torch.arange(channels), torch.arange(channels) % in_per_group, centre, centre] = 1
    return kernel


def bn_to_conv(bn: _BatchNorm, kernel_size: int = 1) -> tuple[Tensor, Tensor]:
    """A BatchNorm as a depthwise conv: weight ``[C, 1, k, k]`` (scaled dirac), bias ``[C]``."""
    scale, shift = bn_scale_shift(bn)
    kernel = dirac_kernel(scale.numel(), kernel_size, groups=scale.numel(), like=scale)
    return kernel * scale.reshape(-1, 1, 1, 1), shift


def pad_kernel(weight: Tensor, kernel_size: Sequence[int]) -> Tensor:
    """Zero-pad ``weight`` [..., kh, kw] around its centre to ``kernel_size`` (same parity per axis)."""
    (kh, kw), (th, tw) = weight.shape[-2:], tuple(kernel_size)
    dh, dw = th - kh, tw - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {th}x{tw}: sizes must grow by an even amount")
    return F.pad(weight, [dw // 2, dw // 2, dh // 2, dh // 2])


def dilate_kernel(weight: Tensor, dilation: Sequence[int]) -> Tensor:
    """A dilated kernel as the dense kernel with zeros between taps: 2x2 at dilation 2 -> 3x3."""
    dh, dw = dilation
    kh, kw = weight.shape[-2:]
    dense = weight.new_zeros(*weight.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dense[..., ::dh, ::dw] = weight
    return dense


def _largest_size(weights: Sequence[Tensor]) -> tuple[int, int]:
    return max(w.shape[-2] for w in weights), max(w.shape[-1] for w in weights)


def merge_parallel(branches: Sequence[tuple[Tensor, Bias]]) -> tuple[Tensor, Bias]:
    """Parallel convs on one input whose outputs are added -> one conv (kernels padded to the largest)."""
    size = _largest_size([w for w, _ in branches])
    weight = sum(pad_kernel(w, size) for w, _ in branches)
    biases = [b for _, b in branches if b is not None]
    return weight, (sum(biases) if biases else None)


def merge_chunks(branches: Sequence[tuple[Tensor, Bias]]) -> tuple[Tensor, Bias]:
    """Grouped convs on consecutive channel chunks, concatenated -> one grouped conv.

    Each branch is a grouped conv over its own chunk (e.g. depthwise); stacking their kernels
    along the output axis gives one conv over the whole input whose groups are the union.
    Kernels are padded to the largest size; a missing bias counts as zero.
    """
    size = _largest_size([w for w, _ in branches])
    weight = torch.cat([pad_kernel(w, size) for w, _ in branches])
    if all(b is None for _, b in branches):
        return weight, None
    bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in branches])
    return weight, bias


def merge_copies(branches: Sequence[tuple[Tensor, Bias]]) -> tuple[Tensor, Bias]:
    """Depthwise convs on one input, concatenated -> one grouped conv with ``len(branches)`` outputs per group.

    A grouped conv orders outputs group by group, so the result's channel ``n * k + j`` is
    branch ``j``'s channel ``k``; ``nn.ChannelShuffle(channels)`` restores the concatenated order.
    """
    size = _largest_size([w for w, _ in branches])
    weight = torch.stack([pad_kernel(w, size) for w, _ in branches], dim=1).flatten(0, 1)
    if all(b is None for _, b in branches):
        return weight, None
    bias = torch.stack([b if b is not None else w.new_zeros(w.shape[0]) for w, b in branches], dim=1).flatten()
    return weight, bias


def merge_separable(first: tuple[Tensor, Bias], second: tuple[Tensor, Bias]) -> tuple[Tensor, Bias, Bias]:
    """A depthwise 1xk conv and a depthwise kx1 conv in series (either order) -> one kxk conv.

    Returns ``(weight, bias, border_kernel)``. The kernel is the outer product of the two.
    When the first conv has a bias, the second conv's zero padding sees that bias only inside the
    image, so near the borders the bias of the composite is not constant: ``border_kernel``
    (the second kernel times the first bias, or ``None`` when there is no first bias) lets
    :class:`BorderBiasConv2d` add that exact correction.
    """
    (w1, b1), (w2, b2) = first, second
    if w1.shape[1] != 1 or w2.shape[1] != 1:
        raise ValueError("merge_separable expects depthwise kernels [C, 1, kh, kw]")
    if not ((w1.shape[-2] == 1 and w2.shape[-1] == 1) or (w1.shape[-1] == 1 and w2.shape[-2] == 1)):
        raise ValueError(f"kernels {tuple(w1.shape[-2:])} and {tuple(w2.shape[-2:])} are not a 1xk/kx1 pair")
    weight = w1 * w2
    if b1 is None:
        return weight, b2, None
    interior = b1 * w2.flatten(1).sum(1)
    bias = interior if b2 is None else b2 + interior
    return weight, bias, w2 * b1.reshape(-1, 1, 1, 1)


class BorderBiasConv2d(nn.Conv2d):
    """A stride-1 depthwise conv whose bias near the borders follows a zero-padded inner bias.

    Produced by :func:`merge_separable` when the first conv of a separable pair has a bias: the
    composite equals ``conv(x) + border(H, W)`` where ``border`` is zero away from the image
    edges and depends only on the spatial size, never on the values of ``x``.
    """

    def __init__(self, channels: int, kernel_size: int, border_kernel: Tensor):
        super().__init__(
            channels,
            channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=channels,
            device=border_kernel.device,
            dtype=border_kernel.dtype,
        )
        self.register_buffer("border_kernel", border_kernel.clone())
        self.border_padding = same_padding(border_kernel.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        ones = x.new_ones(1, self.in_channels, x.shape[-2], x.shape[-1])
        inside = F.conv2d(ones, self.border_kernel, padding=self.border_padding, groups=self.in_channels)
        border = inside - self.border_kernel.flatten(1).sum(1).reshape(1, -1, 1, 1)
        return self._conv_forward(x, self.weight, self.bias) + border


@torch.no_grad()
def conv_from_kernel(
    weight: Tensor,
    bias: Bias,
    stride: int | Sequence[int] = 1,
    groups: int = 1,
    padding: Sequence[int] | None = None,
    border_kernel: Bias = None,
) -> nn.Conv2d:
    """A new ``nn.Conv2d`` holding ``weight`` [out, in / groups, kh, kw] and ``bias`` [out].

    ``padding`` defaults to the centred padding derived from the kernel size; the module lives on
    the device and dtype of ``weight``. A ``border_kernel`` from :func:`merge_separable` gives a
    :class:`BorderBiasConv2d`.
    """
    out_channels, in_per_group, kh, kw = weight.shape
    if border_kernel is not None:
        conv: nn.Conv2d = BorderBiasConv2d(out_channels, kh, border_kernel)
    else:
        padding = same_padding((kh, kw)) if padding is None else tuple(padding)
        # skip_init: the kernels are overwritten at once, and random init of large ones is slow
        conv = torch.nn.utils.skip_init(
            nn.Conv2d, in_per_group * groups, out_channels, (kh, kw), stride=stride, padding=padding,
            groups=groups, bias=bias is not None, device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
    conv.weight.copy_(weight)
    if bias is not None:
        conv.bias.copy_(bias)
    return conv


def absorb_activated_shortcut(
    depthwise: tuple[Tensor, Bias], expand: tuple[Tensor, Bias], project: tuple[Tensor, Bias]
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Shortcut re-parameterization: ``act(x) + P(act(E(D(x))))`` -> ``P'(act(E'(D'(x))))``, no addition.

    ``D`` is a depthwise conv ``[C, 1, k, k]``, ``E`` a 1x1 conv to ``H`` channels ``[H, C, 1, 1]``,
    ``P`` a 1x1 conv back to ``C`` ``[C, H, 1, 1]``; ``act`` is the same elementwise activation in the
    shortcut and in the MLP. ``D'`` carries ``x`` next to ``D(x)`` (dirac kernels interleaved, 2C
    channels), ``E'`` passes ``x`` through unchanged ahead of ``E(D(x))`` (C + H channels), so the one
    activation yields ``act(x)`` there, and ``P'`` adds it back with an identity block (``[C, C + H]``).
    """
    (dw_w, dw_b), (ex_w, ex_b), (pr_w, pr_b) = depthwise, expand, project
    channels, hidden, k = dw_w.shape[0], ex_w.shape[0], dw_w.shape[-1]
    identity = dirac_kernel(channels, k, groups=channels, like=dw_w)
    dw_bias = dw_b if dw_b is not None else dw_w.new_zeros(channels)
    new_dw = merge_copies([(identity, dw_w.new_zeros(channels)), (dw_w, dw_bias)])  # channel 2c: x_c, 2c + 1: D(x)_c
    new_ex_w = ex_w.new_zeros(channels + hidden, 2 * channels, 1, 1)
    new_ex_w[torch.arange(channels), 2 * torch.arange(channels)] = 1
    new_ex_w[channels:, 1::2] = ex_w
    new_ex_b = torch.cat([ex_w.new_zeros(channels), ex_b if ex_b is not None else ex_w.new_zeros(hidden)])
    eye = dirac_kernel(channels, 1, like=pr_w)
    new_pr_w = torch.cat([eye, pr_w], dim=1)
    new_pr_b = pr_b if pr_b is not None else pr_w.new_zeros(channels)
    return new_dw, (new_ex_w, new_ex_b), (new_pr_w, new_pr_b)


def _by_group(weight: Tensor, groups: int) -> Tensor:
    """``[out, in / groups, ...]`` -> ``[groups, out / groups, in / groups, ...]`` (output channels are group-major)."""
    if weight.shape[0] % groups:
        raise ValueError(f"{weight.shape[0]} output channels do not split into {groups} groups")
    return weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])


def _check_chain(first: Tensor, second: Tensor, groups: int) -> None:
    if first.shape[0] != second.shape[1] * groups:
        raise ValueError(
            f"the first conv gives {first.shape[0]} channels but the second, with {groups} groups, "
            f"expects {second.shape[1] * groups}"
        )


def fuse_1x1_kxk(first: tuple[Tensor, Bias], second: tuple[Tensor, Bias], groups: int = 1) -> tuple[Tensor, Bias]:
    """A 1x1 conv then a kxk conv, both with ``groups`` groups -> one kxk conv.

    ``first``: ``[M, C / groups, 1, 1]``, ``second``: ``[D, M / groups, kh, kw]``; the result is
    ``[D, C / groups, kh, kw]`` with ``W[d, c] = sum_m W2[d, m] W1[m, c]`` inside each group, used with the
    kxk conv's stride and padding. The first bias reaches every tap of the kxk kernel, which is exact when
    the kxk conv has no padding; with zero padding its border taps see zeros where the composite sees that
    bias, so a padded kxk conv is exact only when the first conv has no bias (or away from the borders).
    """
    (w1, b1), (w2, b2) = first, second
    if w1.shape[-2:] != (1, 1):
        raise ValueError(f"the first conv must be 1x1, got {tuple(w1.shape[-2:])}")
    _check_chain(w1, w2, groups)
    mix = _by_group(w1, groups)[..., 0, 0]  # [g, M / g, C / g]
    weight = torch.einsum("gdmhw,gmc->gdchw", _by_group(w2, groups), mix).flatten(0, 1)
    if b1 is None:
        return weight, b2
    through = torch.einsum("gdmhw,gm->gd", _by_group(w2, groups), b1.reshape(groups, -1)).flatten()
    return weight, through if b2 is None else b2 + through


def fuse_kxk_1x1(first: tuple[Tensor, Bias], second: tuple[Tensor, Bias], groups: int = 1) -> tuple[Tensor, Bias]:
    """A kxk conv then a 1x1 conv, both with ``groups`` groups -> one kxk conv (exact for any padding and stride).

    ``first``: ``[M, C / groups, kh, kw]``, ``second``: ``[D, M / groups, 1, 1]``; the result is
    ``[D, C / groups, kh, kw]`` with ``W[d, c] = sum_m W2[d, m] W1[m, c]`` inside each group and bias
    ``W2 b1 + b2``, used with the kxk conv's stride and padding. The 1x1 conv acts on each pixel alone,
    so the padding of the kxk conv is unaffected.
    """
    (w1, b1), (w2, b2) = first, second
    if w2.shape[-2:] != (1, 1):
        raise ValueError(f"the second conv must be 1x1, got {tuple(w2.shape[-2:])}")
    _check_chain(w1, w2, groups)
    mix = _by_group(w2, groups)[..., 0, 0]  # [g, D / g, M / g]
    weight = torch.einsum("gdm,gmchw->gdchw", mix, _by_group(w1, groups)).flatten(0, 1)
    if b1 is None:
        return weight, b2
    through = torch.einsum("gdm,gm->gd", mix, b1.reshape(groups, -1)).flatten()
    return weight, through if b2 is None else b2 + through


def avg_pool_kernel(channels: int, kernel_size: int, groups: int = 1, like: Tensor | None = None) -> Tensor:
    """``nn.AvgPool2d(kernel_size)`` as a conv kernel ``[channels, channels // groups, k, k]``.

    Each output channel averages its own input channel: ``1 / k^2`` on all its taps. Exact with the
    pooling's stride and padding as long as padded zeros count in the average (``count_include_pad=True``,
    the default). ``groups=channels`` gives a depthwise kernel, ``groups=1`` one that adds to a dense conv's.
    """
    average = dirac_kernel(channels, 1, groups, like) / kernel_size**2
    return average.repeat(1, 1, kernel_size, kernel_size)


def linear_to_conv(weight: Tensor, bias: Bias) -> tuple[Tensor, Bias]:
    """A Linear ``[out, in]`` as a 1x1 conv ``[out, in, 1, 1]`` that applies it to every pixel (same bias)."""
    return weight.reshape(*weight.shape, 1, 1), bias


def conv_to_linear(weight: Tensor, bias: Bias, groups: int = 1) -> tuple[Tensor, Bias]:
    """A 1x1 conv ``[out, in / groups, 1, 1]`` as a Linear ``[out, in]`` on each pixel's channel vector.

    A grouped conv becomes a block-diagonal matrix (one block per group).
    """
    if weight.shape[-2:] != (1, 1):
        raise ValueError(f"only a 1x1 conv is a Linear on each pixel, got a {tuple(weight.shape[-2:])} kernel")
    return torch.block_diag(*_by_group(weight, groups)[..., 0, 0].unbind(0)), bias


@torch.no_grad()
def linear_from_weight(weight: Tensor, bias: Bias) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight`` ``[out, in]`` and ``bias`` ``[out]``, on their device and dtype."""
    # skip_init: the weights are overwritten at once
    linear = torch.nn.utils.skip_init(
        nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    return linear


@torch.no_grad()
def fold_output_affine(module: nn.Module, scale: Tensor, shift: Tensor) -> nn.Module:
    """Fold ``scale * module(x) + shift`` (e.g. a following BatchNorm) into ``module``.

    A ``Conv2d`` gets new kernels (:func:`fold_affine_after`); any other module must provide
    ``fold_output_affine(scale, shift)`` itself, e.g. a token mixer made of several convs.
    """
    if type(module) is nn.Conv2d:
        weight, bias = fold_affine_after(module.weight, module.bias, scale, shift)
        return conv_from_kernel(weight, bias, module.stride, module.groups, module.padding)
    if hasattr(module, "fold_output_affine"):
        return module.fold_output_affine(scale, shift)
    raise TypeError(f"cannot fold a per-channel affine into {type(module).__name__}")


def has_single_branch_form(model: nn.Module) -> bool:
    """Whether ``reparameterize(model, single_branch=True)`` (and ``two_branch=True``) differs from the default (some
    ``merge_branches()``)."""
    return any(hasattr(module, "merge_branches") for module in model.modules())


@torch.no_grad()
def reparameterize(
    model: nn.Module, inplace: bool = False, single_branch: bool = False, two_branch: bool = False
) -> nn.Module:
    """Return the inference form of ``model``: every module with ``fuse()`` replaced by its result.

    Same walk as ``timm.utils.reparameterize_model`` (so both give the same model). With
    ``single_branch=True`` every module with ``merge_branches()`` is then collapsed further into
    its single-branch equivalent (e.g. RepNeXt's ChunkConv into one depthwise 11x11 conv); with
    ``two_branch=True`` every module with ``merge_square_branches()`` keeps two (RepNeXt's ChunkConv:
    one depthwise 7x7 conv beside its separable 1x11 then 11x1).
    Idempotent: a fused model has nothing left to fuse. Call on a model in ``eval()``
    semantics: BatchNorm running statistics are folded in.
    """
    if single_branch and two_branch:
        raise ValueError("reparameterize: single_branch and two_branch are two different forms; choose one")
    if not inplace:
        model = copy.deepcopy(model)
    _replace_children(model, "fuse")
    if single_branch:
        _replace_children(model, "merge_branches")
    if two_branch:
        _replace_children(model, "merge_square_branches")
    return model


def _replace_children(module: nn.Module, method: str) -> None:
    for name, child in module.named_children():
        if hasattr(child, method):
            child = getattr(child, method)()
            setattr(module, name, child)
        _replace_children(child, method)
